"""What every launcher shares: the `scone-jax train` command line, steps, dry-run and execution.

A launcher turns its flags into a list of steps (a `Command` to run, or a `WriteFile` to write)
and hands them to `execute`. With `--dry-run` each step is printed as shell text that does the
same thing when pasted (a command line, `probe || command`, or a here-document), and nothing
runs. Without it, every binary the steps need is looked up on PATH first, so a missing
`gcloud`/`xpk`/`sbatch` fails with one line before anything is created.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import TextIO, Union

from scone_jax.errors import UserError

# What to do when a binary is missing, by name.
INSTALL_HINTS: dict[str, str] = {
    "gcloud": "install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install)",
    "xpk": "install it with `pip install xpk` (https://github.com/AI-Hypercomputer/xpk)",
    "sbatch": "run this on a SLURM login node, or use --dry-run to only print the script",
    "scone-jax": "install the package here first (`pip install -e .` or `make install`)",
}
HEREDOC_END = "SCONE_EOF"
_GIN_OVERRIDE = re.compile(r"--gin\.([^=\s]+)=(.*)", re.DOTALL)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class CommandFailed(Exception):
  """A launched command exited non-zero; the launcher exits with the same status."""

  def __init__(self, returncode: int, command: str):
    super().__init__(f"exit status {returncode} from: {command}")
    self.returncode = returncode


@dataclasses.dataclass(frozen=True)
class TrainRun:
  """One `scone-jax train` invocation.

  gin_files: gin files in the order given; overrides: (NAME, VALUE) bindings where VALUE is gin
  text (`65536`, `'adam'`, `@optax.adam`); workdir: the run directory (often gs://...).
  """
  gin_files: tuple[str, ...]
  overrides: tuple[tuple[str, str], ...]
  workdir: str

  def argv(self, extra: Sequence[str] = ()) -> list[str]:
    """The argv of the run; `extra` (e.g. the multi-host flags) goes last."""
    words = ["scone-jax", "train"]
    for gin_file in self.gin_files:
      words += ["--gin_file", gin_file]
    words += [f"--gin.{name}={value}" for name, value in self.overrides]
    return words + ["--workdir", self.workdir, *extra]


@dataclasses.dataclass(frozen=True)
class Command:
  """A local command; skipped when `unless` (a probe, e.g. `describe`) exits 0."""
  argv: tuple[str, ...]
  unless: tuple[str, ...] = ()

  def render(self) -> str:
    line = shlex.join(self.argv)
    return f"{shlex.join(self.unless)} || {line}" if self.unless else line


@dataclasses.dataclass(frozen=True)
class WriteFile:
  """A local text file to write (parents created); printed as a here-document."""
  path: str
  text: str

  def render(self) -> str:
    assert HEREDOC_END not in self.text.splitlines(), "file text would end the here-document"
    text = self.text if self.text.endswith("\n") else self.text + "\n"
    parent = os.path.dirname(self.path)
    mkdir = f"mkdir -p {shlex.quote(parent)} && " if parent else ""
    return f"{mkdir}cat > {shlex.quote(self.path)} <<'{HEREDOC_END}'\n{text}{HEREDOC_END}"


Step = Union[Command, WriteFile]


def command(*words: str, unless: Sequence[str] = ()) -> Command:
  return Command(tuple(words), tuple(unless))


def render(steps: Sequence[Step]) -> str:
  """The dry-run text: one step per line (a here-document spans its lines)."""
  return "".join(step.render() + "\n" for step in steps)


def check_binaries(steps: Sequence[Step]) -> None:
  """Raises UserError naming the first binary the steps need that is not on PATH."""
  for step in steps:
    if not isinstance(step, Command):
      continue
    for argv in (step.unless, step.argv):
      if argv and shutil.which(argv[0]) is None:
        hint = INSTALL_HINTS.get(argv[0], "install it or add it to PATH")
        raise UserError(f"`{argv[0]}` not found on PATH; {hint}")


def execute(steps: Sequence[Step], dry_run: bool, out: TextIO | None = None,
            keep_going: bool = False) -> int:
  """Prints the steps (dry run) or runs them in order; returns the exit status.

  A failing command raises CommandFailed, unless keep_going, in which case the remaining steps
  still run and the first failure's status is returned.
  """
  out = out or sys.stdout
  if dry_run:
    out.write(render(steps))
    out.flush()
    return 0
  check_binaries(steps)
  first_failure = 0
  for step in steps:
    if isinstance(step, WriteFile):
      if os.path.dirname(step.path):
        os.makedirs(os.path.dirname(step.path), exist_ok=True)
      with open(step.path, "w") as f:
        f.write(step.text)
      print(f"wrote {step.path}", file=sys.stderr)
      continue
    if step.unless:
      probe = subprocess.run(step.unless, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
      if probe.returncode == 0:
        print(f"skipped (`{shlex.join(step.unless)}` succeeded): {shlex.join(step.argv)}",
              file=sys.stderr)
        continue
    print(f"+ {shlex.join(step.argv)}", file=sys.stderr, flush=True)
    returncode = subprocess.run(step.argv).returncode
    if returncode != 0:
      if not keep_going:
        raise CommandFailed(returncode, shlex.join(step.argv))
      print(f"failed with exit status {returncode}; continuing (--keep_going)", file=sys.stderr)
      first_failure = first_failure or returncode
  return first_failure


# ---- flags ------------------------------------------------------------------------------------

def new_parser(prog: str, description: str) -> argparse.ArgumentParser:
  # allow_abbrev=False: `--gin.X=V` must never be taken for an abbreviation of another flag.
  return argparse.ArgumentParser(prog=prog, description=description, allow_abbrev=False,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)


def add_dry_run_argument(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                      help="print the commands (one per line, shell-quoted) and execute nothing")


def add_gin_file_argument(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--gin_file", dest="gin_files", action="append", required=True,
                      metavar="FILE", help="gin file passed to `scone-jax train` (repeatable); "
                      "gin bindings follow as --gin.NAME=VALUE, exactly as for `scone-jax train`")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
  """--gin_file, --workdir, and (collected by `parse_args`) --gin.NAME=VALUE."""
  add_gin_file_argument(parser)
  parser.add_argument("--workdir", required=True,
                      help="run directory as the training hosts see it (e.g. gs://bucket/run)")
  parser.set_defaults(accepts_gin=True)


def add_env_argument(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                      help="environment variable for the training processes (repeatable)")


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
  """Parses argv; `--gin.NAME=VALUE` words become args.gin_overrides [(NAME, VALUE)]."""
  args, extra = parser.parse_known_args(None if argv is None else list(argv))
  overrides, unknown = [], []
  for word in extra:
    match = _GIN_OVERRIDE.fullmatch(word)
    if match:
      overrides.append((match.group(1), match.group(2)))
    else:
      unknown.append(word)
  if unknown:
    hint = " (gin bindings are written --gin.NAME=VALUE)" if any(
        w.startswith("--gin.") for w in unknown) else ""
    parser.error(f"unrecognized arguments: {' '.join(unknown)}{hint}")
  if overrides and not getattr(args, "accepts_gin", False):
    parser.error("--gin.NAME=VALUE bindings only apply to commands that train")
  args.gin_overrides = overrides
  return args


def train_run(args: argparse.Namespace) -> TrainRun:
  return TrainRun(tuple(args.gin_files), tuple(args.gin_overrides), args.workdir)


def parse_env(pairs: Sequence[str]) -> list[tuple[str, str]]:
  """['K=V', ...] -> [(K, V), ...]; K must be a shell variable name."""
  parsed = []
  for pair in pairs:
    name, sep, value = pair.partition("=")
    if not sep or not _ENV_NAME.fullmatch(name):
      raise UserError(f"--env {pair!r} is not KEY=VALUE with KEY a shell variable name; "
                      "write e.g. --env XLA_FLAGS=--xla_dump_to=/tmp/dump")
    parsed.append((name, value))
  return parsed


def shell_exports(pairs: Sequence[tuple[str, str]]) -> list[str]:
  """`export K=V` statements, values quoted."""
  return [f"export {name}={shlex.quote(value)}" for name, value in pairs]


def safe_name(text: str, allowed: str = r"A-Za-z0-9._=,+-", max_len: int = 200) -> str:
  """`text` with every run of characters outside `allowed` made one '_' (for file and job names)."""
  cleaned = re.sub(f"[^{allowed}]+", "_", text).strip("_")
  return cleaned[:max_len] or "run"


def join_path(base: str, name: str) -> str:
  """base/name for local paths and URLs alike (gs://bucket/sweep + a -> gs://bucket/sweep/a)."""
  return f"{base.rstrip('/')}/{name}"


def last_component(path: str) -> str:
  """gs://bucket/runs/exp1/ -> exp1, as a safe file name (log and manifest names)."""
  return safe_name(path.rstrip("/").rsplit("/", 1)[-1])


def is_url(path: str) -> bool:
  return "://" in path


def run_main(prog: str, parser: argparse.ArgumentParser,
             plan: Callable[[argparse.Namespace], Sequence[Step]],
             argv: Sequence[str] | None) -> int:
  """Parses argv, plans the steps, prints or runs them; user errors are one line on stderr."""
  args = parse_args(parser, argv)
  try:
    steps = plan(args)
    return execute(steps, args.dry_run, keep_going=getattr(args, "keep_going", False))
  except UserError as e:
    print(f"{prog}: error: {e}", file=sys.stderr)
    return 2
  except CommandFailed as e:
    print(f"{prog}: error: {e}", file=sys.stderr)
    return e.returncode
  except KeyboardInterrupt:
    print(f"{prog}: interrupted", file=sys.stderr)
    return 130
