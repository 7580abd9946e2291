"""The `scone-jax` command.

Each subcommand lives in the module of the stage it belongs to; that module defines
`add_arguments(parser)` and `run(args) -> int`. Modules are imported only when their
subcommand runs, so `scone-jax prepare --help` never pays for importing JAX or TensorFlow.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from scone_jax.errors import UserError

# name -> (module, one-line help). Nested groups are dicts.
COMMANDS: dict[str, object] = {
    "prepare": ("scone_jax.data.prepare", "tokenize a corpus into ArrayRecord shards"),
    "fgrams": {
        "build": ("scone_jax.fgram.build", "count n-grams and write the f-gram vocabulary"),
        "match": ("scone_jax.fgram.match_cli", "show the f-gram match of every position"),
        "tag": ("scone_jax.fgram.tags", "pre-tag DATA with every position's f-gram match length (TAGS_DIR)"),
    },
    "train": ("scone_jax.train.loop", "train from gin files; resumes automatically"),
    "eval": ("scone_jax.commands.eval", "loss, perplexity, bits per byte on held-out corpora; multiple choice"),
    "compile": ("scone_jax.train.aot", "AOT-compile the train step for a TPU topology"),
    "describe": ("scone_jax.commands.describe", "parameter and FLOP accounting of gin files as JSON, without data"),
    "export": ("scone_jax.export.writer", "precompute the f-gram table into a zarr store, or write safetensors (--format)"),
    "generate": ("scone_jax.serve.generate", "decode from a trained run"),
    "store": {
        "verify": ("scone_jax.serve.verify", "read a store once and check every block against its hash"),
    },
    "sweep": ("scone_jax.sweep", "a grid of runs (|V_f|, K, A_f, any gin binding) + baselines: plan, run here or on tpu/xpk/slurm, collect"),
    "demo": ("scone_jax.demo", "the end-to-end demo on the embedded corpus"),
    "compare": ("scone_jax.compare", "baseline, SCONE, n-gram hash and STEM on equal terms: one table and plot"),
    "bench": {
        "train": ("scone_jax.bench.train", "MFU of the train step against this host's matmul peak"),
        "count": ("scone_jax.bench.count", "n-gram counting throughput vs a sort-and-count"),
        "match": ("scone_jax.bench.match", "exact matcher throughput vs a dict matcher"),
        "lookup": ("scone_jax.bench.lookup", "f-gram row query latency vs batch size, RAM and disk tiers"),
        "decode": ("scone_jax.bench.decode", "decode tokens/s with SCONE rows from RAM / disk vs the baseline"),
        "export": ("scone_jax.bench.export", "export write throughput vs this disk's sequential write"),
        "pipeline": ("scone_jax.bench.pipeline", "input pipeline tokens/s vs the tiny SCONE train step"),
    },
}


def _add(sub, name: str, spec) -> None:
  if isinstance(spec, dict):
    parser = sub.add_parser(name, help=f"{name} subcommands")
    inner = parser.add_subparsers(dest=f"{name}_command", metavar="COMMAND", required=True)
    for child, child_spec in spec.items():
      _add(inner, child, child_spec)
    return
  module_name, help_text = spec
  parser = sub.add_parser(name, help=help_text, description=help_text,
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)   # defaults in every --help
  parser.set_defaults(_module=module_name, _parser=parser)


class _Parser(argparse.ArgumentParser):
  """argparse, but a usage error is one line (the usage is one `--help` away)."""

  def error(self, message):
    self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
  from scone_jax import __version__
  parser = _Parser(prog="scone-jax", description=__doc__.splitlines()[0])
  parser.add_argument("--version", action="version", version=f"scone-jax {__version__}")
  sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
  for name, spec in COMMANDS.items():
    _add(sub, name, spec)
  return parser


def _selected_module(argv: list[str]) -> str | None:
  """Finds the module of the subcommand named in argv without parsing its flags."""
  spec: object = COMMANDS
  for word in argv:
    if word.startswith("-"):
      break
    if not isinstance(spec, dict) or word not in spec:
      return None
    spec = spec[word]
    if not isinstance(spec, dict):
      return spec[0]
  return None


# Libraries' log lines (orbax's absl warnings about read-only checkpoint managers, jax's platform
# probing) would surround our one-line errors and our output; SCONE_JAX_VERBOSE=1 shows them.
TENSORSTORE_STATUSES = ("NOT_FOUND", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "DATA_LOSS", "UNAVAILABLE",
                        "DEADLINE_EXCEEDED", "FAILED_PRECONDITION", "ALREADY_EXISTS", "UNAUTHENTICATED", "ABORTED")
TENSORSTORE_HINTS = {"RESOURCE_EXHAUSTED": "no space left (or over quota): free space or choose another output",
                     "PERMISSION_DENIED": "choose a writable output, or check the credentials",
                     "UNAUTHENTICATED": "check the credentials"}
QUIET_LOGGERS = ("absl", "jax._src.xla_bridge", "orbax", "tensorstore")


def _quiet_libraries() -> None:
  if os.environ.get("SCONE_JAX_VERBOSE"):
    return
  for name in QUIET_LOGGERS:
    logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  _quiet_libraries()
  parser = build_parser(argv)
  module_name = _selected_module(argv)
  module = None
  if module_name is not None:
    module = importlib.import_module(module_name)
    # Re-create the leaf parser with the module's own flags.
    leaf = parser
    words = [w for w in argv if not w.startswith("-")]
    spec: object = COMMANDS
    for word in words:
      if not isinstance(spec, dict):
        break
      action = next(a for a in leaf._actions if isinstance(a, argparse._SubParsersAction))
      leaf = action.choices[word]
      spec = spec[word]
    module.add_arguments(leaf)
  args, extra = parser.parse_known_args(argv)
  if extra and not getattr(module, "ACCEPTS_EXTRA", False):
    parser.error(f"unrecognized arguments: {' '.join(extra)}")
  args.extra = extra
  name = " ".join(w for w in (args.command, getattr(args, f"{args.command}_command", None)) if w)
  with _CtrlC() as ctrl_c:
    try:
      return _run(module, args, name, ctrl_c)
    except BaseException as e:
      # Ctrl-C inside a library's C code can surface as another exception (numpy's tofile turns
      # it into a TypeError): once the user has pressed it, whatever ends the command is that.
      if not ctrl_c.pressed and not isinstance(e, KeyboardInterrupt):
        raise
      print(f"scone-jax {name}: interrupted", file=sys.stderr)
      return 130


class _CtrlC:
  """Records that SIGINT arrived (then raises KeyboardInterrupt as Python does)."""

  def __init__(self):
    self.pressed, self._old = False, None

  def __enter__(self):
    import signal
    import threading
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
      self._old = signal.signal(signal.SIGINT, self._handle)
    return self

  def _handle(self, signum, frame):
    self.pressed = True
    raise KeyboardInterrupt

  def __exit__(self, *exc):
    if self._old is not None:
      import signal
      signal.signal(signal.SIGINT, self._old)


def _run(module, args, name: str, ctrl_c: _CtrlC) -> int:
  try:
    return int(module.run(args) or 0)
  except (UserError, ValueError, OSError):
    if ctrl_c.pressed:   # the error is the interrupt's doing: say "interrupted"
      raise
    return _one_line(name)


def _one_line(name: str) -> int:
  """The one-line message of the exception being handled (UserError, tensorstore's ValueError, OSError)."""
  try:
    raise
  except UserError as e:
    print(f"scone-jax {name}: error: {e}", file=sys.stderr)
    return 2
  except ValueError as e:
    # tensorstore reports a failed I/O as ValueError with an absl status code first ("NOT_FOUND:",
    # "PERMISSION_DENIED:", ...): a bad path or store, said in one line. Anything else is a bug.
    status = str(e).split(":", 1)[0]
    if status not in TENSORSTORE_STATUSES:
      raise
    text = " ".join(str(e).split())
    if len(text) > 300:   # keep the start (what failed) and the end (the OS's reason, e.g. errno 28)
      text = f"{text[:170]} ... {text[-120:]}"
    print(f"scone-jax {name}: error: {text}: {TENSORSTORE_HINTS.get(status, 'check the path or store URL')}",
          file=sys.stderr)
    return 2
  except OSError as e:   # disk full, read-only or unwritable output, vanished files
    where = f" ({e.filename})" if e.filename else ""
    hint = {28: "free space or choose another output", 30: "choose a writable output",
            13: "choose a writable output"}.get(e.errno, "check the path")
    print(f"scone-jax {name}: error: {e.strerror or e}{where}: {hint}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
