"""Atomic writes: a reader sees the old file (or directory) or the new one, never half of one.

A file is written to a temporary sibling (same filesystem), flushed and fsync'd, then renamed
over its path with os.replace. A directory is written into a temporary sibling directory that
is renamed into place when the writer finishes, so an interrupted writer (exception, SIGKILL)
never leaves a directory that looks complete.

A `scheme://` path (gs://...) is written through scone_jax/paths.py instead: one object write,
atomic on a bucket, and nothing local.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import tempfile
from typing import Iterator


def human_bytes(n: float) -> str:
  """A size for a message: GiB from 1 GiB, else MiB from 1 MiB, else KiB."""
  for unit, size in (("GiB", 2 ** 30), ("MiB", 2 ** 20)):
    if n >= size:
      return f"{n / size:,.2f} {unit}"
  return f"{n / 2 ** 10:,.2f} KiB"


def atomic_write_bytes(path: str, data: bytes) -> None:
  """Writes `data` to `path`, replacing it atomically (permissions as open() would give)."""
  if "://" in path:
    from scone_jax import paths
    paths.atomic_write_bytes(path, data)
    return
  directory, name = os.path.split(os.path.abspath(path))
  tmp = os.path.join(directory, f".{name}.{secrets.token_hex(4)}.tmp")
  try:
    with open(tmp, "xb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise


def atomic_write_text(path: str, text: str) -> None:
  """Writes `text` (UTF-8) to `path`, replacing it atomically."""
  atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str, obj, **json_kwargs) -> None:
  """Writes json.dumps(obj, **json_kwargs) to `path`, replacing it atomically."""
  atomic_write_text(path, json.dumps(obj, **json_kwargs))


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
  """Runs a short block (a rename pair, a cleanup) with Ctrl-C held back: a SIGINT that arrives
  meanwhile is raised as KeyboardInterrupt when the block ends, never inside it. Outside the main
  thread (signals only reach it) the block runs as it is."""
  import signal
  import threading
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  held = []
  old = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
  try:
    yield
  finally:
    signal.signal(signal.SIGINT, old)
  if held and old is not signal.SIG_IGN:
    if callable(old):
      old(signal.SIGINT, None)   # the command's own handler (it records the interrupt, then raises)
    raise KeyboardInterrupt


@contextlib.contextmanager
def atomic_directory(path: str) -> Iterator[str]:
  """Yields a new, empty directory beside `path` to write into. When the block ends, that
  directory becomes `path` (an existing `path` is kept until the new one is in place, then
  removed); when the block raises, it is removed and `path` is left as it was."""
  parent, name = os.path.split(os.path.abspath(path))
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=f".{name}.partial-", dir=parent)
  try:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp's 0700 would outlive the rename
    yield staging
    with deferred_interrupts():   # never between the two renames: `path` is never missing
      _move_into_place(staging, path)
  except BaseException:
    with deferred_interrupts():
      shutil.rmtree(staging, ignore_errors=True)
    raise


def _move_into_place(staging: str, path: str) -> None:
  old = None
  if os.path.isdir(path):
    if os.listdir(path):
      parent, name = os.path.split(os.path.abspath(path))
      old = tempfile.mkdtemp(prefix=f".{name}.old-", dir=parent)
      os.replace(path, old)
    else:
      os.rmdir(path)
  os.replace(staging, path)
  if old is not None:
    shutil.rmtree(old, ignore_errors=True)


class Locked(Exception):
  """Another process holds the lock (its pid, when it could be read, is `holder`)."""

  def __init__(self, path: str, holder: str):
    super().__init__(path, holder)
    self.path, self.holder = path, holder


@contextlib.contextmanager
def directory_lock(directory: str, *, shared: bool = False) -> Iterator[None]:
  """An advisory lock on `directory` (its file `.lock`) for the `with` block: exclusive (one
  writer) or shared (readers that must not overlap a writer). flock(2) locks belong to the open
  file, so the kernel releases them when the process exits in any way, SIGKILL included: a lock
  can never go stale. Raises Locked at once (never waits) when a conflicting holder exists."""
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, ".lock")
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
      raise Locked(path, holder) from None
    if not shared:
      os.ftruncate(fd, 0)
      os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    yield
  finally:
    os.close(fd)   # releases the lock
