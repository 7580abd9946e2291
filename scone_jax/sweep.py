"""`scone-jax sweep`: one grid of runs, planned, launched on a backend and collected.

  scone-jax sweep --gin_file models/demo.gin --gin_file runs/miniature.gin [--method methods/scone.gin] \\
      --gin.FgramConfig.max_n=4 --axis FgramConfig.size=4096,16384,65536 --axis FgramConfig.num_layers=1,2 \\
      --seeds 0,1,2 --baselines equal_steps,equal_flops --data DATA --out DIR \\
      [--backend local|tpu|xpk|slurm BACKEND FLAGS] [--dry_run] [--collect_only]

The grid. `--gin_file` and `--gin.NAME=VALUE` are exactly `scone-jax train`'s (the main model's
model file first, then its run files); `--method` (default methods/scone.gin) is the method
overlay the grid's runs add right after the first file. `--axis NAME=V1,V2,...` is one axis
(repeatable): NAME a gin binding, the values gin text split at top-level commas (brackets and
quotes nest; outer [] optional): `--axis FgramConfig.size=4096,16384`, `--axis
"FgramConfig.d_model=128,256"`, `--axis "ModelConfig.mlp='gelu','swiglu'"`. The runs are the
cartesian product of the axes (the last varies fastest) times `--seeds` (the SEED macro). |V_f|
is FgramConfig.size, K FgramConfig.max_n, A_f's depth FgramConfig.num_layers and width
FgramConfig.d_model: each an axis, or one value in the gin files or a `--gin.` flag.

Baselines (`--baselines`, comma-separated, or `none`): the main model alone (the gin files without
the overlay, the axes that are not FgramConfig.*), every seed:
  equal_steps  trained TRAIN_STEPS steps, as the grid's runs
  equal_flops  trained the steps at which it has used the training FLOPs of a grid point
               (floor(TRAIN_STEPS x F_train(point) / F_train(baseline)), both per-token FLOPs
               from `scone-jax describe`; one baseline per distinct count; the inverse of
               describe's equal_flops.steps, which shortens the SCONE run instead)

F-grams: one `fgrams build` per K, at the largest |V_f| of that K, into DIR/fgrams/; every run
reads its |V_f| as the prefix FgramConfig.size of that file (exact: docs/WORKSPACE.md "Sweeps").

Backends (`--backend`; `--backend B --backend_help` lists its flags, those of launch/B.py):
  local  (default) here: f-grams built in this process, each run its own `scone-jax train`
         process (`--jobs N` at once), its output in DIR/logs/RUN.log; finished runs
         (RUN/summary.json) are skipped, so a rerun resumes
  tpu    each run in turn on a TPU VM slice (launch/tpu_pod.py: --name, --zone; after
         `python -m launch.tpu_pod up` or `setup`)
  xpk    one xpk workload per run (launch/xpk.py: --cluster, --workload PREFIX, --tpu_type)
  slurm  one sbatch job per run (launch/slurm.py)
The f-gram builds run on this host in every backend (DATA and DIR must be paths it and the
training hosts share; `--fgram_build_args='--runner beam --beam_args=...'` counts on a cluster).
`--dry_run` prints every step as shell text (the plan DIR/sweep.json as a here-document, the
builds, each run's launch) and does nothing. After the runs, the collector (`--collect_only`
alone re-reads DIR/sweep.json) writes DIR/table.md, DIR/table.json and three figures
(scone_jax/commands/sweep_results.py). `python -m launch.sweep` is this command.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
import threading

from scone_jax.commands import sweep_results as R
from scone_jax.errors import UserError

ACCEPTS_EXTRA = True   # --gin.NAME=VALUE and the backend's flags
BACKENDS = ("local", "tpu", "xpk", "slurm")
BASELINES = ("equal_steps", "equal_flops")
PLAN = "sweep.json"
_GIN_NAME = re.compile(r"[A-Za-z_][\w.]*(/[A-Za-z_][\w.]*)*")
_RESERVED = {"SEED": "--seeds", "DATA_DIR": "--data", "FGRAM_DIR": "the sweep's own f-gram build"}
_OPEN, _CLOSE = "([{", ")]}"


def _launch():
  """launch/ (common, tpu_pod, xpk, slurm): a directory beside the package in the checkout."""
  try:
    import launch  # noqa: F401
  except ImportError:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not os.path.isfile(os.path.join(root, "launch", "__init__.py")):
      raise UserError("the launchers (launch/) are not beside this scone_jax: run the sweep from a checkout") from None
    sys.path.insert(0, root)
  from launch import common, slurm, tpu_pod, xpk
  return common, tpu_pod, xpk, slurm


def _ints(text: str) -> list[int]:
  try:
    return [int(x) for x in text.split(",") if x.strip()]
  except ValueError as e:
    raise argparse.ArgumentTypeError(f"{text!r} is not comma-separated whole numbers") from e


class _Help(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
  """The docstring as written, and every flag's default."""


def add_arguments(p: argparse.ArgumentParser) -> None:
  p.formatter_class = _Help
  p.description = __doc__
  p.add_argument("--gin_file", action="append", default=[], help="the main model's gin files, as for train (repeatable)")
  p.add_argument("--method", default="methods/scone.gin", help="the method overlay of the grid's runs")
  p.add_argument("--axis", action="append", default=[], metavar="NAME=V1,V2", help="one grid axis (repeatable)")
  p.add_argument("--seeds", type=_ints, default=[0], help="SEED of every run")
  p.add_argument("--baselines", default="equal_steps", help="equal_steps,equal_flops or none")
  p.add_argument("--data", help="prepared DATA directory (DATA_DIR of every run)")
  p.add_argument("--out", required=True, help="sweep directory: sweep.json, fgrams/, runs/, logs/, table, figures")
  p.add_argument("--min_count", type=int, default=5, help="c_min of the f-gram builds")
  p.add_argument("--fgram_build_args", default="", help="more `fgrams build` flags, one shell string")
  p.add_argument("--backend", choices=BACKENDS, default="local")
  p.add_argument("--backend_help", action="store_true", help="list the --backend's own flags and exit")
  p.add_argument("--jobs", type=int, default=1, help="local backend: runs at once")
  p.add_argument("--keep_going", action="store_true", help="launch the remaining runs after one fails")
  p.add_argument("--dry_run", "--dry-run", dest="dry_run", action="store_true", help="print the steps, run nothing")
  p.add_argument("--collect_only", action="store_true", help="only read the runs and write the table and figures")


# ---- axes -------------------------------------------------------------------------------------------


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
    raise UserError(f"axis values {text!r} have an unclosed quote or bracket")
  values.append(text[start:].strip())
  if any(not value for value in values):
    raise UserError(f"axis values {text!r} have an empty value; write e.g. --axis FgramConfig.size=4096,16384")
  return values


def parse_axis(flag: str) -> tuple[str, list[str]]:
  name, sep, values = flag.partition("=")
  name = name.strip()
  if not sep or not _GIN_NAME.fullmatch(name):
    raise UserError(f"--axis {flag!r} is not NAME=V1,V2,... with NAME a gin binding such as FgramConfig.size")
  if name in _RESERVED:
    raise UserError(f"--axis {name} is set by {_RESERVED[name]}, not by an axis")
  return name, split_values(values)


def short_keys(names) -> dict[str, str]:
  """Binding name -> the part shown in run names: the last dotted part unless two collide."""
  last = {name: re.split(r"[./]", name)[-1] for name in names}
  counts = {key: list(last.values()).count(key) for key in last.values()}
  return {name: key if counts[key] == 1 else name.replace("/", ".") for name, key in last.items()}


def _name_part(value: str) -> str:
  cleaned = re.sub(r"[^A-Za-z0-9.+-]+", "_", str(value).strip("'\"")).strip("_")
  return cleaned[:40] or "x"


# ---- the plan ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Build:
  max_n: int
  size: int
  out: str

  def argv(self, data: str, min_count: int, extra: str) -> list[str]:
    return ["fgrams", "build", "--data", data, "--max_n", str(self.max_n), "--size", str(self.size),
            "--min_count", str(min_count), *shlex.split(extra), "--out", self.out]


@dataclasses.dataclass(frozen=True)
class PlannedRun:
  name: str
  role: str                                # point | baseline
  gin_files: tuple[str, ...]
  overrides: tuple[tuple[str, str], ...]   # (NAME, gin text)
  workdir: str
  why: str = ""                            # baselines: which comparisons need it

  def train_argv(self) -> list[str]:
    words = ["train"] + [w for f in self.gin_files for w in ("--gin_file", f)]
    return words + [f"--gin.{n}={v}" for n, v in self.overrides] + ["--workdir", self.workdir]


@dataclasses.dataclass
class Plan:
  axes: list[tuple[str, list[str]]]
  builds: list[Build]
  runs: list[PlannedRun]
  notes: list[str]

  def as_json(self, args) -> dict:
    return {"axes": {n: v for n, v in self.axes}, "gin_files": args.gin_file, "method": args.method,
            "seeds": args.seeds, "baselines": args.baselines, "data": args.data, "min_count": args.min_count,
            "builds": [dataclasses.asdict(b) for b in self.builds],
            "runs": [{"name": r.name, "role": r.role, "workdir": r.workdir, "gin_files": list(r.gin_files),
                      "overrides": dict(r.overrides), "why": r.why} for r in self.runs]}


def _abs(path: str) -> str:
  return path if "://" in path else os.path.abspath(path)


def _gin_str(path: str) -> str:
  return "'" + path.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _resolved(gin_files, overrides) -> tuple:
  """(FgramConfig, TrainConfig) of these files and bindings, with no data or f-gram file."""
  from scone_jax import config as C
  from scone_jax.methods.scone import FgramConfig
  C.parse_gin(list(gin_files), ["DATA_DIR = ''", "FGRAM_DIR = ''"] + [f"{n} = {v}" for n, v in overrides])
  return C.build(FgramConfig), C.build(C.TrainConfig)


def _describe(gin_files, overrides, data: str) -> dict:
  from scone_jax.commands import describe
  bindings = [f"{n} = {v}" for n, v in overrides if n not in ("DATA_DIR", "FGRAM_DIR")]
  meta = os.path.join(data, "meta.json")
  if "://" not in data and os.path.isfile(meta) and not any(n == "ModelConfig.vocab_size" for n, _ in overrides):
    with open(meta) as f:
      bindings.append(f"ModelConfig.vocab_size = {json.load(f)['vocab_size']}")
  return describe.describe(list(gin_files), bindings)


def make_plan(args, gin_overrides: list[tuple[str, str]]) -> Plan:
  """Every run and build of the sweep (gin's "Path not found" log of each include it resolves
  through experiments/ is silenced while planning, unless SCONE_JAX_VERBOSE)."""
  import logging
  root, level = logging.getLogger(), logging.getLogger().level
  if not os.environ.get("SCONE_JAX_VERBOSE"):
    root.setLevel(logging.CRITICAL)
  try:
    return _make_plan(args, gin_overrides)
  finally:
    root.setLevel(level)


def _make_plan(args, gin_overrides: list[tuple[str, str]]) -> Plan:
  axes = [parse_axis(a) for a in args.axis]
  names = [n for n, _ in axes]
  for n in names:
    if names.count(n) > 1:
      raise UserError(f"--axis {n} is given twice; give each axis once, with all its values")
    if any(o == n for o, _ in gin_overrides):
      raise UserError(f"{n} is both an --axis and --gin.{n}=...; give it in one place")
  for n, _ in gin_overrides:
    if n in _RESERVED:
      raise UserError(f"--gin.{n} is set by {_RESERVED[n]}; drop the flag")
  wanted = [b.strip() for b in args.baselines.split(",") if b.strip() and b.strip() != "none"]
  for b in wanted:
    if b not in BASELINES:
      raise UserError(f"--baselines {args.baselines!r}: {b!r} is not one of {', '.join(BASELINES)} (or none)")
  if not args.seeds:
    raise UserError("--seeds is empty; give at least one seed, e.g. --seeds 0")
  out, data = _abs(args.out), _abs(args.data)
  first, rest = args.gin_file[0], args.gin_file[1:]
  scone_files = (first, args.method, *rest)
  keys = short_keys(names)
  points = []   # (axis bindings, K, |V_f|, steps)
  for values in itertools.product(*(v for _, v in axes)):
    binding = tuple(zip(names, values))
    fcfg, tcfg = _resolved(scone_files, gin_overrides + list(binding))
    where = ", ".join(f"{n}={v}" for n, v in binding) or "the grid"
    if fcfg.size < 1:
      raise UserError(f"no |V_f| for {where}: give --axis FgramConfig.size=S1,S2 or --gin.FgramConfig.size=S")
    if fcfg.max_n < 2:
      raise UserError(f"no K for {where}: give --axis FgramConfig.max_n=K1,K2 or --gin.FgramConfig.max_n=K (>= 2)")
    points.append((binding, fcfg.max_n, fcfg.size, tcfg.steps))
  builds = {}
  for _, k, size, _ in points:
    builds[k] = max(builds.get(k, 0), size)
  fg = {k: R.join(out, "fgrams", f"k{k}_s{s}_c{args.min_count}") for k, s in builds.items()}
  runs, notes = [], []
  flops = {}
  seen: set[str] = set()
  for index, (binding, k, size, steps) in enumerate(points):
    label = ",".join(f"{keys[n]}={_name_part(v)}" for n, v in binding) or "scone"
    if label in seen:   # values that differ only in characters names drop
      label = f"{label}-{index}"
    seen.add(label)
    overrides = [*gin_overrides, ("DATA_DIR", _gin_str(data)), ("FGRAM_DIR", _gin_str(fg[k])), *binding]
    d = _describe(scone_files, overrides, args.data)
    acct = d["accounting"]
    flops[binding] = (acct["train_flops_per_token"], d["equal_flops"]["baseline_train_flops_per_token"], steps)
    notes.append(f"{label}: K {k}, |V_f| {size:,}, {steps:,} steps; resident {acct['resident_params']:,}, "
                 f"training-only {acct['training_params']:,}, offloaded {acct['offloaded_entries']:,}; "
                 f"train FLOPs/token {acct['train_flops_per_token']:,.0f} (baseline "
                 f"{d['equal_flops']['baseline_train_flops_per_token']:,.0f}; FLOP-matched SCONE steps "
                 f"{d['equal_flops']['steps']:,})")
    for seed in args.seeds:
      name = f"{label},seed={seed}"
      runs.append(PlannedRun(name, "point", scone_files, tuple(overrides + [("SEED", str(seed))]),
                             R.join(out, "runs", name)))
  if wanted:
    main_names = [n for n in names if not n.startswith("FgramConfig.")]
    base_overrides = [(n, v) for n, v in gin_overrides
                      if not n.startswith("FgramConfig.") and n not in ("FGRAM_DIR", "TAGS_DIR")]
    main_points: dict[tuple, dict[int, list[str]]] = {}
    for binding, _, _, steps in points:
      main = tuple((n, v) for n, v in binding if n in main_names)
      need = main_points.setdefault(main, {})
      if "equal_steps" in wanted:
        need.setdefault(steps, []).append("equal steps")
      if "equal_flops" in wanted:
        f_point, f_base, _ = flops[binding]
        n_steps = R.equal_flops_steps(steps, f_point, f_base)
        what = ",".join(f"{keys[n]}={_name_part(v)}" for n, v in binding if n not in main_names) or "scone"
        need.setdefault(n_steps, []).append(f"equal FLOPs with {what}")
    for main, need in main_points.items():
      _, tcfg = _resolved(args.gin_file, base_overrides + list(main))
      for steps, why in sorted(need.items()):
        why = "; ".join(dict.fromkeys(why))
        label = ",".join(["baseline", *(f"{keys[n]}={_name_part(v)}" for n, v in main), f"steps={steps}"])
        # equal FLOPs: TRAIN_STEPS replaced where it was given, else added
        kept = [(n, v) for n, v in base_overrides if steps == tcfg.steps or n != "TRAIN_STEPS"]
        extra = [] if steps == tcfg.steps else [("TRAIN_STEPS", str(steps))]
        notes.append(f"{label}: {why}")
        for seed in args.seeds:
          name = f"{label},seed={seed}"
          overrides = [*kept, ("DATA_DIR", _gin_str(data)), *main, *extra, ("SEED", str(seed))]
          runs.append(PlannedRun(name, "baseline", tuple(args.gin_file), tuple(overrides),
                                 R.join(out, "runs", name), why))
  return Plan(axes, [Build(k, s, fg[k]) for k, s in builds.items()], runs, notes)


# ---- backends ---------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
  def error(self, message):
    raise UserError(f"{message} (see --backend {self.backend} --backend_help)")


def backend_parser(backend: str) -> argparse.ArgumentParser:
  """The flags of one backend: those of its launcher in launch/ (one code path per backend)."""
  _, tpu_pod, xpk, slurm = _launch()
  parser = _Parser(prog=f"scone-jax sweep --backend {backend}", add_help=False, allow_abbrev=False)
  parser.backend = backend
  group = parser.add_argument_group(f"--backend {backend}")
  if backend == "tpu":
    tpu_pod.add_tpu_arguments(group)
    tpu_pod.add_run_arguments(group)
  elif backend == "xpk":
    xpk.add_workload_arguments(group, "workload name prefix; run i is PREFIX-i")
  elif backend == "slurm":
    slurm.add_job_arguments(group)
  return parser


def parse_extra(backend: str, extra: list[str]) -> tuple[argparse.Namespace, list[tuple[str, str]]]:
  """(the backend's flags, the --gin.NAME=VALUE bindings) of the words the sweep's parser left."""
  common = _launch()[0]
  gin, rest = [], []
  for word in extra:
    match = common._GIN_OVERRIDE.fullmatch(word)
    if match:
      gin.append((match.group(1), match.group(2)))
    else:
      rest.append(word)
  ns, unknown = backend_parser(backend).parse_known_args(rest)
  if unknown:
    raise UserError(f"unrecognized arguments for --backend {backend}: {' '.join(unknown)} "
                    "(gin bindings are written --gin.NAME=VALUE; --backend_help lists the backend's flags)")
  return ns, gin


def launch_steps(args, ns, plan: Plan, text: str) -> list:
  """Every step of the sweep as launch/ steps: the plan file, the builds, each run's launch."""
  common, tpu_pod, xpk, slurm = _launch()
  # A bucket URL: the plan is written here, sweep-NAME.json (bucket paths are issue 11's).
  plan_path = f"sweep-{common.last_component(args.out)}.json" if common.is_url(args.out) else R.join(_abs(args.out), PLAN)
  steps = [common.WriteFile(plan_path, text)]
  for b in plan.builds:
    meta = R.join(b.out, "meta.json")
    # a finished build is skipped; `test -f` cannot see a bucket object (etils.epath can: the [gcs] extra)
    probe = (("python3", "-c", f"import sys; from etils import epath; sys.exit(not epath.Path({meta!r}).exists())")
             if common.is_url(meta) else ("test", "-f", meta))
    steps.append(common.command("scone-jax", *b.argv(_abs(args.data), args.min_count, args.fgram_build_args),
                                unless=probe))
  if args.backend == "tpu" and ns.detach and len(plan.runs) > 1:
    raise UserError("--detach would start every run on the slice at once; drop it so the runs go one after another")
  for index, run in enumerate(plan.runs):
    train = common.TrainRun(run.gin_files, run.overrides, run.workdir)
    if args.backend == "local":
      steps.append(common.command(*train.argv()))
    elif args.backend == "tpu":
      steps += tpu_pod.run_steps(ns, train, run.name)
    elif args.backend == "xpk":
      steps += xpk.create_steps(ns, train, f"{ns.workload}-{index}")
    else:
      steps += slurm.job_steps(ns, train, f"{ns.job_name}-{run.name}")
  return steps


# ---- local execution ----------------------------------------------------------------------------------


def _done(run: PlannedRun) -> bool:
  return R.exists(R.join(run.workdir, "summary.json"))


def run_local(args, plan: Plan, text: str) -> list[str]:
  """Builds the f-grams here, writes the plan, trains every unfinished run; returns the failed runs."""
  from scone_jax import cli
  from scone_jax.files import atomic_write_text
  for b in plan.builds:
    if R.exists(R.join(b.out, "meta.json")):
      print(f"f-grams K={b.max_n} |V_f|={b.size:,}: built before ({b.out})", flush=True)
    else:
      print(f"f-grams K={b.max_n} |V_f|={b.size:,}: counting once for every |V_f| <= {b.size:,}", flush=True)
      if cli.main(b.argv(_abs(args.data), args.min_count, args.fgram_build_args)):
        raise UserError(f"building the K={b.max_n} f-grams failed (see above)")
    with open(R.join(b.out, "meta.json")) as f:
      have = json.load(f)["num_fgrams"]
    if have < b.size:
      raise UserError(f"|V_f|={b.size:,} is planned but {args.data!r} has only {have:,} f-grams of 2..{b.max_n} tokens "
                      f"seen >= {args.min_count} times ({b.out}): lower --min_count or the FgramConfig.size values")
  os.makedirs(_abs(args.out), exist_ok=True)
  atomic_write_text(R.join(_abs(args.out), PLAN), text)
  logs = R.join(_abs(args.out), "logs")
  os.makedirs(logs, exist_ok=True)
  todo = []
  for i, run in enumerate(plan.runs):
    if _done(run):
      print(f"[{i + 1}/{len(plan.runs)}] {run.name}: done before", flush=True)
    else:
      todo.append((i, run))
  failed, stop, lock = [], threading.Event(), threading.Lock()

  def train(item):
    i, run = item
    if stop.is_set():
      return
    with lock:
      print(f"[{i + 1}/{len(plan.runs)}] {run.name}: training", flush=True)
    log = R.join(logs, f"{run.name}.log")
    # One process per run: no state (compiled programs, threads, gin) carries from run to run.
    with open(log, "w") as f:
      rc = subprocess.run([sys.executable, "-m", "scone_jax.cli", *run.train_argv(), "--quiet"],
                          stdout=f, stderr=subprocess.STDOUT).returncode
    with lock:
      if rc:
        failed.append(run.name)
        print(f"[{i + 1}/{len(plan.runs)}] {run.name}: failed with exit status {rc} (log: {log})", flush=True)
        if not args.keep_going:
          stop.set()
      else:
        print(f"[{i + 1}/{len(plan.runs)}] {run.name}: done", flush=True)

  with concurrent.futures.ThreadPoolExecutor(max(1, args.jobs)) as pool:
    list(pool.map(train, todo))
  return failed


# ---- the command --------------------------------------------------------------------------------------


def collect(out: str, plan_json: dict) -> tuple[list[dict], list]:
  """The table and figures of the sweep in `out`: its planned runs and any other run in out/runs."""
  planned = [r["workdir"] for r in plan_json["runs"]]
  others = [R.join(out, "runs", n) for n in R.list_dirs(R.join(out, "runs")) if R.join(out, "runs", n) not in planned]
  rows, runs = R.collect(out, planned + others, list(plan_json["axes"]), "SCONE sweep")
  return rows, runs


def run(args) -> int:
  if args.jobs < 1:
    raise UserError(f"--jobs {args.jobs} must be >= 1")
  ns, gin_overrides = parse_extra(args.backend, args.extra)
  if args.backend_help:
    backend_parser(args.backend).print_help()
    return 0
  out = _abs(args.out)
  if args.collect_only:
    path = R.join(out, PLAN)
    if not R.exists(path):
      raise UserError(f"--collect_only: {path!r} does not exist: run the sweep (or paste its --dry_run) first")
    plan_json = json.loads(R.read_text(path))
    collect(out, plan_json)
    print(R.read_text(R.join(out, "table.md")))
    return 0
  if not args.gin_file:
    raise UserError("no --gin_file: give the main model's files, e.g. --gin_file models/tiny.gin --gin_file runs/cpu.gin")
  if not args.data:
    raise UserError("no --data: give the prepared DATA directory every run trains on")
  plan = make_plan(args, gin_overrides)
  plan_json = plan.as_json(args)
  text = json.dumps(plan_json, indent=2) + "\n"
  steps = launch_steps(args, ns, plan, text)
  if args.dry_run:
    print(f"# sweep: {sum(r.role == 'point' for r in plan.runs)} runs of the grid, "
          f"{sum(r.role == 'baseline' for r in plan.runs)} baseline runs, {len(plan.builds)} f-gram build(s) "
          f"({', '.join(f'K={b.max_n} at |V_f|={b.size:,}' for b in plan.builds)})")
    for note in plan.notes:
      print(f"#   {note}")
    _launch()[0].execute(steps, dry_run=True)
    return 0
  if args.backend != "local":
    common = _launch()[0]
    try:
      rc = common.execute(steps, dry_run=False, keep_going=args.keep_going)
    except common.CommandFailed as e:
      print(f"scone-jax sweep: error: {e}", file=sys.stderr)
      return e.returncode
    print(f"launched {len(plan.runs)} runs; when they are done: scone-jax sweep --out {args.out} --collect_only")
    return rc
  failed = run_local(args, plan, text)
  if any(_done(r) for r in plan.runs):
    collect(out, plan_json)
    print(R.read_text(R.join(out, "table.md")))
  if failed:
    print(f"scone-jax sweep: {len(failed)} of {len(plan.runs)} runs failed ({', '.join(failed)}; logs in "
          f"{R.join(out, 'logs')}): rerun the same command to retry them", file=sys.stderr)
    return 1
  return 0
