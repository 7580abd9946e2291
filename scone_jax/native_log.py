"""Log lines that native libraries write straight to file descriptor 2, kept off the user's screen.

tensorstore's C++ code logs through absl, not through Python's logging, so `cli.QUIET_LOGGERS`
cannot reach it. The one line a user meets is the Google auth provider's, written once per
process on the first access to a gs:// URL when no credentials file exists ("E1202 ... Could not
find the credentials file in the standard gcloud location ..."), also on a TPU VM that then
authenticates through the metadata server. `captured()` runs a block with fd 2 sent to a
temporary file, then writes back to stderr everything that is not an absl-format log line, and
hands the log lines to the caller (to explain a failure, or to show with SCONE_JAX_VERBOSE=1).
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile

# absl's prefix: severity, MMDD hh:mm:ss.micros, thread id, file:line]
ABSL_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ [\w.\-/]+:\d+\] ")


class Captured:
  """What a `captured()` block's native code logged (filled when the block exits)."""

  def __init__(self):
    self.lines: list[str] = []
    self.keep = False

  def mentions(self, text: str) -> bool:
    return any(text in line for line in self.lines)

  def keep_capturing(self) -> None:
    """The block failed and the command is about to end: native lines that come later (a
    request still running in a library thread) stay off the screen too. Python's own stderr
    (the command's error line) goes to the terminal as before."""
    self.keep = True


@contextlib.contextmanager
def captured():
  """Runs the block with fd 2 captured; non-log output is written back to stderr afterwards."""
  out = Captured()
  if os.environ.get("SCONE_JAX_VERBOSE"):
    yield out
    return
  try:
    sys.stderr.flush()
    saved = os.dup(2)
  except (OSError, ValueError):   # no real fd 2 (an embedding host): nothing to capture
    yield out
    return
  tmp = tempfile.TemporaryFile(mode="w+b")
  os.dup2(tmp.fileno(), 2)
  try:
    yield out
  finally:
    sys.stderr.flush()
    tmp.seek(0)
    text = tmp.read().decode("utf-8", "replace")
    other = []
    for line in text.splitlines(keepends=True):
      (out.lines if ABSL_LINE.match(line) else other).append(line)
    out.lines = [line.rstrip("\n") for line in out.lines]
    if out.keep:   # fd 2 stays on the file for the rest of the process; Python writes to the terminal
      sys.stderr = os.fdopen(saved, "w", buffering=1, errors="backslashreplace")
      _held.append(tmp)
    else:
      os.dup2(saved, 2)
      os.close(saved)
      tmp.close()
    if other:
      sys.stderr.write("".join(other))
      sys.stderr.flush()


_held: list = []   # capture files that fd 2 still points at
