"""Expand a grid of gin bindings into runs and launch them locally or through a launcher.

  --grid NAME=[V1,V2,...]   one grid axis (repeatable); values are gin text, split at top-level
                            commas (brackets and quotes nest): --grid "opt.name=['adam','sgd']"
  --grid_file F             a JSON or YAML mapping NAME -> list of values (numbers and booleans
                            become gin literals, strings are gin text as written, e.g. "'adam'")

Runs are the cartesian product of the axes in the order given (the last axis varies fastest).
Each run is named from its bindings (`size=65536,num_layers=2`: the last dotted part of each
name, the full name where two would collide) and trains in BASE_WORKDIR/NAME. A manifest JSON of
the runs (name, overrides, workdir) is written first: BASE_WORKDIR/manifest.json, or
./sweep-<base name>.json when BASE_WORKDIR is a URL (override with --manifest).

  --backend local  each run in turn here, via `scone-jax train` (stops at the first failure
                   unless --keep_going)
  --backend tpu    each run in turn on a TPU VM slice set up with `launch.tpu_pod up/setup`
  --backend xpk    one xpk workload per run, named WORKLOAD-<index>
  --backend slurm  one sbatch job per run, named JOB_NAME-<run name>
`--backend B --help` lists that backend's flags.

  python -m launch.sweep --backend local --gin_file experiments/models/tiny.gin \\
      --gin_file experiments/runs/cpu.gin --gin.DATA_DIR="'data/tiny'" \\
      --grid 'ModelConfig.num_layers=[2,4]' --grid 'TrainConfig.learning_rate=[1e-3,3e-3]' \\
      --workdir runs/sweep1 --dry-run
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import re
import sys
from collections.abc import Sequence

from launch import common, slurm, tpu_pod, xpk
from launch.common import Step, TrainRun, WriteFile, command
from scone_jax.errors import UserError

PROG = "python -m launch.sweep"
BACKENDS = ("local", "tpu", "xpk", "slurm")
_GIN_NAME = re.compile(r"[A-Za-z_][\w.]*(/[A-Za-z_][\w.]*)*")
_OPEN, _CLOSE = "([{", ")]}"


@dataclasses.dataclass(frozen=True)
class SweepRun:
  """One point of the grid: its index, readable name, bindings and workdir."""
  index: int
  name: str
  overrides: tuple[tuple[str, str], ...]
  workdir: str


def split_values(text: str) -> list[str]:
  """'[1, (2, 3), 'a,b']' -> ['1', '(2, 3)', "'a,b'"]: top-level comma split, outer [] optional."""
  text = text.strip()
  if text.startswith("[") and text.endswith("]"):
    text = text[1:-1]
  values, depth, quote, start = [], 0, "", 0
  for i, char in enumerate(text):
    if quote:
      quote = "" if char == quote else quote
    elif char in "'\"":
      quote = char
    elif char in _OPEN:
      depth += 1
    elif char in _CLOSE:
      depth -= 1
    elif char == "," and depth == 0:
      values.append(text[start:i].strip())
      start = i + 1
  if quote or depth:
    raise UserError(f"grid values {text!r} have an unclosed quote or bracket")
  values.append(text[start:].strip())
  if any(not value for value in values):
    raise UserError(f"grid values {text!r} have an empty value; write e.g. NAME=[1,2]")
  return values


def gin_literal(value: object) -> str:
  """A JSON/YAML value as gin text: numbers, True/False/None, lists; strings as written."""
  if isinstance(value, bool):
    return "True" if value else "False"
  if value is None:
    return "None"
  if isinstance(value, (int, float)):
    return repr(value)
  if isinstance(value, str):
    return value
  if isinstance(value, (list, tuple)):
    return "[" + ", ".join(gin_literal(item) for item in value) + "]"
  raise UserError(f"grid value {value!r} is not a number, boolean, string or list")


def _check_name(name: str, where: str) -> str:
  if not _GIN_NAME.fullmatch(name):
    raise UserError(f"{where}: {name!r} is not a gin binding name like fgram.size or "
                    "scope/model.num_layers")
  return name


def parse_grid_flag(flag: str) -> tuple[str, list[str]]:
  name, sep, values = flag.partition("=")
  if not sep:
    raise UserError(f"--grid {flag!r} is not NAME=[V1,V2,...]")
  return _check_name(name.strip(), f"--grid {flag!r}"), split_values(values)


def load_grid_file(path: str) -> list[tuple[str, list[str]]]:
  """A JSON (.json) or YAML (.yaml/.yml) mapping NAME -> values, as gin text, in file order."""
  try:
    with open(path) as f:
      text = f.read()
  except OSError as e:
    raise UserError(f"--grid_file {path}: {e.strerror}") from e
  if path.endswith((".yaml", ".yml")):
    import yaml  # a dependency of flax and orbax
    try:
      grid = yaml.safe_load(text)
    except yaml.YAMLError as e:
      raise UserError(f"--grid_file {path}: not valid YAML ({e})") from e
  else:
    try:
      grid = json.loads(text)
    except json.JSONDecodeError as e:
      raise UserError(f"--grid_file {path}: not valid JSON ({e})") from e
  if not isinstance(grid, dict) or not grid:
    raise UserError(f"--grid_file {path}: must hold a mapping NAME -> list of values")
  axes = []
  for name, values in grid.items():
    values = values if isinstance(values, list) else [values]
    if not values:
      raise UserError(f"--grid_file {path}: {name} has no values")
    axes.append((_check_name(str(name), f"--grid_file {path}"),
                 [gin_literal(value) for value in values]))
  return axes


def short_keys(names: Sequence[str]) -> dict[str, str]:
  """Binding name -> the part shown in run names: the last dotted part unless two collide."""
  last = {name: re.split(r"[./]", name)[-1] for name in names}
  counts = {key: list(last.values()).count(key) for key in last.values()}
  return {name: key if counts[key] == 1 else name.replace("/", ".") for name, key in last.items()}


def _name_part(value: str) -> str:
  """A value as shown in a run name: quotes dropped, no '=' or ',' (they separate bindings)."""
  return common.safe_name(value.strip("'\""), allowed=r"A-Za-z0-9.+-", max_len=40)


def expand(axes: Sequence[tuple[str, Sequence[str]]], base_workdir: str) -> list[SweepRun]:
  """The cartesian product of the axes, one SweepRun per point, names unique."""
  names = [name for name, _ in axes]
  if len(set(names)) != len(names):
    raise UserError(f"a grid axis is given twice among {names}; give each name once")
  keys = short_keys(names)
  runs, seen = [], set()
  for index, point in enumerate(itertools.product(*(values for _, values in axes))):
    overrides = tuple(zip(names, point))
    run_name = common.safe_name(",".join(
        f"{keys[name]}={_name_part(value)}" for name, value in overrides))
    if run_name in seen:  # values that differ only in characters dropped from names
      run_name = f"{run_name}-{index}"
    seen.add(run_name)
    runs.append(SweepRun(index, run_name, overrides,
                         common.join_path(base_workdir, run_name)))
  return runs


def manifest(args: argparse.Namespace, axes: Sequence[tuple[str, Sequence[str]]],
             runs: Sequence[SweepRun]) -> dict:
  return {
      "backend": args.backend,
      "base_workdir": args.workdir,
      "gin_files": list(args.gin_files),
      "base_overrides": dict(args.gin_overrides),
      "grid": {name: list(values) for name, values in axes},
      "runs": [{"index": run.index, "name": run.name, "overrides": dict(run.overrides),
                "workdir": run.workdir} for run in runs],
  }


def manifest_path(args: argparse.Namespace) -> str:
  if args.manifest:
    return args.manifest
  if common.is_url(args.workdir):
    return f"sweep-{common.last_component(args.workdir)}.json"
  return os.path.join(args.workdir, "manifest.json")


def backend_steps(args: argparse.Namespace, run: SweepRun, train: TrainRun) -> list[Step]:
  if args.backend == "local":
    return [command(*train.argv())]
  if args.backend == "tpu":
    return tpu_pod.run_steps(args, train, run.name)
  if args.backend == "xpk":
    return xpk.create_steps(args, train, f"{args.workload}-{run.index}")
  return slurm.job_steps(args, train, f"{args.job_name}-{run.name}")


def plan(args: argparse.Namespace) -> list[Step]:
  axes = [axis for path in args.grid_file for axis in load_grid_file(path)]
  axes += [parse_grid_flag(flag) for flag in args.grid]
  if not axes:
    raise UserError("no grid: give --grid NAME=[V1,V2] (repeatable) or --grid_file F")
  base_names = {name for name, _ in args.gin_overrides}
  for name, _ in axes:
    if name in base_names:
      raise UserError(f"{name} is both a grid axis and --gin.{name}=...; give it in one place")
  runs = expand(axes, args.workdir)
  if args.backend == "tpu" and args.detach and len(runs) > 1:
    raise UserError("--detach would start every run on the slice at once; drop it so the "
                    "runs go one after another")
  text = json.dumps(manifest(args, axes, runs), indent=2) + "\n"
  steps: list[Step] = [WriteFile(manifest_path(args), text)]
  for run in runs:
    train = TrainRun(tuple(args.gin_files), tuple(args.gin_overrides) + run.overrides,
                     run.workdir)
    steps += backend_steps(args, run, train)
  return steps


def _add_backend_arguments(parser: argparse.ArgumentParser, backend: str) -> None:
  group = parser.add_argument_group(f"--backend {backend}")
  if backend == "tpu":
    tpu_pod.add_tpu_arguments(group)
    tpu_pod.add_run_arguments(group)
  elif backend == "xpk":
    xpk.add_workload_arguments(group, "workload name prefix; run i is PREFIX-i")
  elif backend == "slurm":
    slurm.add_job_arguments(group)


def build_parser(backend: str = "local") -> argparse.ArgumentParser:
  parser = common.new_parser(PROG, __doc__)
  parser.add_argument("--backend", choices=BACKENDS, default="local",
                      help="where the runs go (default: %(default)s)")
  parser.add_argument("--grid", action="append", default=[], metavar="NAME=[V1,V2,...]",
                      help="a grid axis (repeatable)")
  parser.add_argument("--grid_file", action="append", default=[], metavar="FILE",
                      help="grid axes from a JSON or YAML file (repeatable)")
  common.add_gin_file_argument(parser)
  parser.add_argument("--workdir", required=True, help="base workdir; run NAME trains in "
                      "WORKDIR/NAME (base --gin.NAME=VALUE bindings apply to every run)")
  parser.set_defaults(accepts_gin=True)
  parser.add_argument("--manifest", help="where to write the manifest JSON")
  parser.add_argument("--keep_going", action="store_true",
                      help="keep launching runs after one fails")
  common.add_dry_run_argument(parser)
  _add_backend_arguments(parser, backend)
  return parser


def _backend_of(argv: Sequence[str]) -> str:
  """The --backend in argv, read before the full parser exists (its flags depend on it)."""
  pre = argparse.ArgumentParser(prog=PROG, add_help=False, allow_abbrev=False)
  pre.add_argument("--backend", choices=BACKENDS, default="local")
  known, _ = pre.parse_known_args(list(argv))
  return known.backend


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  backend = _backend_of(argv)
  return common.run_main(PROG, build_parser(backend), plan, argv)


if __name__ == "__main__":
  sys.exit(main())
