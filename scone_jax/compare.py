"""`scone-jax compare`: baseline, SCONE, LongCat n-gram hashing and STEM on equal terms.

One command, one table:
  1. prepare builtin:python-stdlib (|V| = 4096) into WORK/data, or reuse --data
  2. fgrams build (K = --max_n, |V_f| = --fgrams) for SCONE
  3. train every method on the same main model (models/demo.gin + --run_file, runs/demo.gin: d 128,
     3 layers, d_ff 512, on a 4-device CPU mesh) with the same data order, steps and seed (or reuse a
     sweep's run that is exactly that run: --runs_from); with --baselines equal_steps,equal_flops also
     a baseline per method at that method's training FLOPs. A method's overlay
     (methods/scone.gin, ngram.gin, stem.gin) adds training-only parameters (A_f)
     or offloadable tables, so what stays on the accelerator at inference is the main model
     (exceptions, printed under the table: the n-gram projections W_t are resident, d^2 in all,
     and STEM layers have no W_up)
  4. evaluate on the whole validation split (in the training run); then time every method side
     by side, taking turns: the train step, and decoding with scone_jax.serve (one device,
     --decode_batch sequences, teacher-forced): SCONE reads its exported table from host RAM,
     n-gram hashing hashes on the host, STEM keeps its tables on the device
  5. write OUT/table.md, OUT/table.json, OUT/compare.png and OUT/COMMANDS.md
Finished stages are skipped (WORK/run_METHOD_sSEED/summary.json, ...), so a rerun resumes.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time

import numpy as np

from scone_jax.cli import main
from scone_jax.commands import sweep_results
from scone_jax.data import shards
from scone_jax.errors import UserError
from scone_jax.export import layout as L
from scone_jax.outputs import pyplot

DEVICES = 4
METHODS = {   # name -> method overlay gin files, between models/demo.gin and runs/demo.gin
    "baseline": [],
    "scone": ["methods/scone.gin"],
    "ngram_hash": ["methods/ngram.gin"],
    "stem": ["methods/stem.gin"],
}


def add_arguments(p: argparse.ArgumentParser) -> None:
  p.add_argument("--out", default="results/compare", help="where the table, plot and COMMANDS.md go")
  p.add_argument("--work", default="compare_work", help="data, f-grams, runs and stores (not results)")
  p.add_argument("--data", default=None, help="a prepared DATA directory to reuse (default: prepare the builtin corpus)")
  p.add_argument("--steps", type=int, default=200, help="train steps per model")
  p.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run per method and seed")
  p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
  p.add_argument("--fgrams", type=int, default=16384, help="|V_f| for SCONE")
  p.add_argument("--max_n", type=int, default=4, help="SCONE's K")
  p.add_argument("--decode_batch", type=int, default=8, help="sequences decoded at once")
  p.add_argument("--decode_tokens", type=int, default=128, help="decode steps per method (all but the first timed)")
  p.add_argument("--run_file", default="runs/demo.gin",
                 help="the run file (schedule, mesh) every method trains with; runs/miniature.gin with --devices 1 "
                      "and --steps 300 is the setting of results/miniature")
  p.add_argument("--devices", type=int, default=DEVICES, help="fake CPU devices of the training mesh (1: none)")
  p.add_argument("--baselines", default="equal_steps",
                 help="equal_steps, or equal_steps,equal_flops: also, per method, a baseline trained the steps at "
                      "which it has used that method's training FLOPs (from the runs' accounting)")
  p.add_argument("--runs_from", default=None,
                 help="a `scone-jax sweep` directory: its finished runs that are exactly a run compare would train "
                      "(same resolved model, data, schedule, mesh, f-grams and seed: checked) are reused, not retrained")


def shell_join(argv: list[str]) -> str:
  """argv as one line that a POSIX shell splits back into these words: words with quotes of one
  kind go in the other kind (`"--gin.DATA_DIR='/data'"`, as one types them), the rest as shlex."""
  out = []
  for word in argv:
    quoted = shlex.quote(word)
    if quoted != word and "'" in word and not set('"$`\\!') & set(word):
      quoted = f'"{word}"'
    out.append(quoted)
  return " ".join(out)


class _Log:
  """The sub-commands run, with their seconds, kept in WORK/stages.json across invocations (a
  resumed comparison still lists every stage in COMMANDS.md)."""

  def __init__(self, work: str):
    self.path = os.path.join(work, "stages.json")
    self.commands: list[list] = []
    if os.path.isfile(self.path):
      with open(self.path) as f:
        self.commands = json.load(f)

  def run(self, argv: list[str]) -> None:
    print(f"\n=== scone-jax {shell_join(argv)}", flush=True)
    t0 = time.time()
    rc = main(argv)
    if rc:
      raise UserError(f"`scone-jax {shell_join(argv)}` failed with exit status {rc}")
    self.commands.append([shell_join(argv), time.time() - t0])   # pastes into a shell as it is
    with open(self.path, "w") as f:
      json.dump(self.commands, f, indent=1)


def run(args) -> int:
  # A sharded mesh on a CPU host: split it into fake devices before JAX starts.
  if args.devices < 1:
    raise UserError(f"--devices {args.devices}: give the number of CPU devices to train on (>= 1)")
  if "jax" not in sys.modules and args.devices > 1:
    os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count={args.devices}")
  if args.steps < 1 or not args.seeds:
    raise UserError("--steps must be >= 1 and --seeds non-empty")
  wanted = {b.strip() for b in args.baselines.split(",") if b.strip()}
  if not wanted <= {"equal_steps", "equal_flops"} or "equal_steps" not in wanted:
    raise UserError(f"--baselines {args.baselines!r}: give equal_steps or equal_steps,equal_flops")
  reusable = _sweep_runs(args.runs_from) if args.runs_from else []
  work, out = os.path.abspath(args.work), os.path.abspath(args.out)
  os.makedirs(work, exist_ok=True)
  os.makedirs(out, exist_ok=True)
  log, t0 = _Log(work), time.time()
  data = os.path.abspath(args.data) if args.data else os.path.join(work, "data")
  if not os.path.isfile(os.path.join(data, "meta.json")):
    if args.data:
      raise UserError(f"--data {args.data!r} has no meta.json: give a directory written by `scone-jax prepare`")
    log.run(["prepare", "--input", "builtin:python-stdlib", "--out", data, "--vocab_size", "4096"])
  fg = os.path.join(work, f"fgrams_k{args.max_n}_s{args.fgrams}")
  if "scone" in args.methods and not os.path.isfile(os.path.join(fg, "meta.json")):
    log.run(["fgrams", "build", "--data", data, "--max_n", str(args.max_n), "--size", str(args.fgrams), "--out", fg])
  results, runs, reused = [], {}, []

  def trained(method: str, seed: int, steps: int, name: str) -> str:
    """The run of `method` at `seed` and `steps`: reused from --runs_from where one is exactly
    it, else trained (or resumed) in WORK/name."""
    argv = [*_gin_args(method, fg, args.run_file), f"--gin.DATA_DIR='{data}'", f"--gin.TRAIN_STEPS={steps}",
            f"--gin.SEED={seed}", "--gin.TrainConfig.eval_batches=0", "--gin.TrainConfig.log_every=10"]
    workdir = os.path.join(work, name)
    if os.path.isfile(os.path.join(workdir, "summary.json")):
      return workdir
    if reusable and method in ("baseline", "scone"):
      found = find_same_run(reusable, argv)
      if found:
        reused.append(f"{name}: {found}")
        print(f"=== {name}: reusing the finished sweep run {found} (the same run)", flush=True)
        return found
    log.run(["train", *argv, "--workdir", workdir, "--quiet"])
    return workdir

  for seed in args.seeds:
    for method in args.methods:
      workdir = trained(method, seed, args.steps, f"run_{method}_s{seed}")
      store = None
      if method == "scone":
        store = os.path.join(work, f"store_s{seed}")
        if not _exported(store):
          log.run(["export", "--workdir", workdir, "--out", store])
      results.append(_result(method, seed, workdir))
      runs.setdefault(method, (workdir, store))
  if "equal_flops" in wanted and "baseline" in args.methods:
    for method, steps in equal_flops_baselines(results, args.steps).items():
      for seed in args.seeds:
        workdir = trained("baseline", seed, steps, f"run_baseline_steps{steps}_s{seed}")
        results.append({**_result("baseline", seed, workdir), "label": f"baseline, {steps} steps",
                        "equal_flops_with": method, "steps": steps})
  print("\n=== throughput: train and decode steps of every method, side by side", flush=True)
  train_speed = train_throughput({m: _gin_args(m, fg, args.run_file) for m in args.methods}, data)
  decode_speed = decode_throughput(runs, data, args.decode_batch, args.decode_tokens)
  for r in results:
    r["train_tokens_per_s"], r["decode_tokens_per_s"] = train_speed[r["method"]], decode_speed[r["method"]]
  table = _aggregate(results)
  args.reused = reused
  _write(out, args, table, results, log, time.time() - t0)
  print(open(os.path.join(out, "table.md")).read())
  return 0


def _exported(store: str) -> bool:
  """A finished export: the manifest is in the group's attributes (export/layout.py, written last)."""
  path = os.path.join(store, "zarr.json")
  if not os.path.isfile(path):
    return False
  with open(path) as f:
    return L.MANIFEST_ATTR in json.load(f).get("attributes", {})


def _gin_args(method: str, fgram_dir: str, run_file: str = "runs/demo.gin") -> list[str]:
  files = ["models/demo.gin", *METHODS[method], run_file]
  out = [a for f in files for a in ("--gin_file", f)]
  return out + ([f"--gin.FGRAM_DIR='{fgram_dir}'"] if method == "scone" else [])


# ---- reusing a sweep's runs: only where one is exactly the run compare would train ----------------

_NOT_RESULTS = {"TrainConfig": ("log_every", "eval_every", "checkpoint_every"),   # when it logs and saves
                "DataConfig": ("data_dir",),                                        # compared by its fingerprint
                "FgramConfig": ("fgram_dir", "tags_dir", "size")}                   # by the f-grams they give


def run_key(gin_files: list[str], bindings: list[str]) -> dict:
  """What decides a run's results, from its gin files and bindings (or a RUN/config.gin): the
  resolved main model, data (by fingerprint), schedule, mesh, seed and, for SCONE, A_f's
  configuration and the f-gram set (K, c_min and data of the file; |V_f| as used, a prefix of the
  ranked file). Logging and checkpoint intervals are left out: they change no number."""
  import dataclasses

  from scone_jax import config as C
  from scone_jax.methods.scone import FgramConfig
  C.parse_gin(gin_files, bindings)
  key = {}
  for cls in (C.ModelConfig, C.DataConfig, C.TrainConfig, C.MeshConfig):
    fields = dataclasses.asdict(C.build(cls))
    key[cls.__name__] = {k: v for k, v in fields.items() if k not in _NOT_RESULTS.get(cls.__name__, ())}
  data_dir = C.build(C.DataConfig).data_dir
  key["data"] = shards.data_fingerprint(data_dir)
  if key["ModelConfig"]["embedding"] == "scone":
    fcfg = C.build(FgramConfig)
    with open(os.path.join(fcfg.fgram_dir, "meta.json")) as f:
      meta = json.load(f)
    fields = {k: v for k, v in dataclasses.asdict(fcfg).items() if k not in _NOT_RESULTS["FgramConfig"]}
    for width in ("d_model", "num_heads", "num_kv_heads", "d_ff"):   # 0 = as the main model
      fields[width] = fields[width] or key["ModelConfig"][width]
    fields["max_n"] = fields["max_n"] or meta["max_n"]                # 0 = the file's K
    key["FgramConfig"] = fields
    key["fgrams"] = {"max_n": meta["max_n"], "min_count": meta["min_count"], "data": meta["data_fingerprint"],
                     "size": min(fcfg.size or meta["num_fgrams"], meta["num_fgrams"])}
  return key


def _sweep_runs(sweep_dir: str) -> list[tuple[str, dict]]:
  """(workdir, run_key) of every finished run of a sweep directory (its sweep.json)."""
  plan_path = os.path.join(sweep_dir, "sweep.json")
  if not os.path.isfile(plan_path):
    raise UserError(f"--runs_from {sweep_dir!r} has no sweep.json: give a directory written by `scone-jax sweep`")
  with open(plan_path) as f:
    planned = [r["workdir"] for r in json.load(f)["runs"]]
  out = []
  for workdir in planned:
    if sweep_results.read_run(workdir).status == "done":
      out.append((workdir, run_key([os.path.join(workdir, "config.gin")], [])))
  return out


def find_same_run(candidates: list[tuple[str, dict]], argv: list[str]) -> str | None:
  """The first candidate whose run_key equals that of `train argv` (gin files and --gin. flags)."""
  from scone_jax.config import bindings_from_flags
  files = [argv[i + 1] for i, a in enumerate(argv) if a == "--gin_file"]
  want = run_key(files, bindings_from_flags([a for a in argv if a.startswith("--gin.")]))
  return next((workdir for workdir, key in candidates if key == want), None)


def equal_flops_baselines(results: list[dict], steps: int) -> dict[str, int]:
  """method -> the baseline steps with that method's training FLOPs of `steps` steps (the sweep's
  rule, sweep_results.equal_flops_steps), for every method whose count differs from `steps`."""
  base = next((r for r in results if r["method"] == "baseline"), None)
  if base is None:
    return {}
  out = {}
  for r in results:
    if r["method"] != "baseline" and r["method"] not in out:
      n = sweep_results.equal_flops_steps(steps, r["train_flops_per_token"], base["train_flops_per_token"])
      if n != steps:
        out[r["method"]] = n
  return out


def _result(method: str, seed: int, workdir: str) -> dict:
  from scone_jax.train import metrics  # imports JAX: only after run() has set XLA_FLAGS
  run = sweep_results.read_run(workdir)   # the sweep's collector: the run's own files
  if run.status != "done":
    raise UserError(f"run {workdir!r} is {run.status} ({run.note}): rerun `scone-jax compare` to resume it")
  summary, acct = run.summary, run.accounting
  losses = [(r["step"], r["loss"]) for r in metrics.read(workdir, "train")]
  return {"method": method, "seed": seed, "eval_loss": summary["eval_loss"], "eval_perplexity": summary["eval_perplexity"],
          "resident_params": acct["resident_params"], "training_params": acct["training_params"],
          "offloaded_entries": acct["offloaded_entries"], "train_flops_per_token": acct["train_flops_per_token"],
          "workdir": workdir, "train_losses": losses}


def _interleaved(timers: dict, rounds: int) -> dict[str, float]:
  """Median over `rounds` of each timer (a call returning tokens/s), the methods taking turns
  within every round, so that load from other processes hits them alike."""
  rates: dict[str, list[float]] = {m: [] for m in timers}
  for _ in range(rounds):
    for m, timer in timers.items():
      rates[m].append(timer())
  return {m: statistics.median(v) for m, v in rates.items()}


def train_throughput(gin_args: dict[str, list[str]], data: str, steps: int = 10, rounds: int = 5) -> dict[str, float]:
  """Train-step tokens/s of every method: the jitted, sharded step on one real batch (the input
  pipeline runs ahead on a thread in training and is not timed)."""
  import jax

  from scone_jax import experiment, parallel
  from scone_jax.config import bindings_from_flags
  from scone_jax.data import pipeline
  from scone_jax.train.state import make_trainer
  timers = {}
  for method, argv in gin_args.items():
    files = [argv[i + 1] for i, a in enumerate(argv) if a == "--gin_file"]
    exp = experiment.load(files, bindings_from_flags([a for a in argv if a.startswith("--gin.")]) + [f"DATA_DIR = '{data}'"])
    mesh = parallel.make_mesh(exp.mesh)
    trainer = make_trainer(exp, mesh)
    rows = exp.data.batch_size
    spec = exp.pipeline_spec("train", batch_devices=trainer.batch_devices, prefetch=0)
    local = next(iter(pipeline.make_dataset(spec)))
    with jax.set_mesh(mesh):
      state = trainer.init()
      step, batch = trainer.jit_train_step(local), trainer.global_batch(local, rows)
      state, metrics = step(state, batch)   # compiles
      jax.block_until_ready(metrics)
    box = {"state": state}

    def timer(mesh=mesh, step=step, batch=batch, box=box, tokens=rows * exp.data.seq_len):
      with jax.set_mesh(mesh):
        t = time.perf_counter()
        for _ in range(steps):
          box["state"], metrics = step(box["state"], batch)
        jax.block_until_ready(metrics)
      return steps * tokens / (time.perf_counter() - t)
    timers[method] = timer
  return _interleaved(timers, rounds)


def decode_throughput(runs: dict[str, tuple[str, str | None]], data: str, batch: int, steps: int,
                      rounds: int = 3) -> dict[str, float]:
  """Decode tokens/s of every method's run on one device: `batch` validation windows (16-token
  prompts), then `steps` teacher-forced steps, of which all but the first are timed."""
  from scone_jax.serve.generate import load_decoder
  prompt = 16
  stream = np.concatenate([d for _, d in zip(range(10 * batch), shards.read_documents(data, "validation"))])
  windows = np.resize(stream, batch * (prompt + steps)).reshape(batch, prompt + steps)   # repeats a short split
  timers = {}
  for method, (workdir, store) in runs.items():
    decoder, run_ = load_decoder(workdir, store=store or "none", tier="ram", data_dir=data)
    meta = run_.exp.data_meta

    def timer(decoder=decoder, meta=meta):
      marks: dict[int, float] = {}
      decoder.generate([w[:prompt] for w in windows], max_new_tokens=steps, bos_id=meta.bos_id, eos_id=meta.eos_id,
                       force_tokens=windows[:, prompt:], on_step=lambda t: marks.__setitem__(t, time.perf_counter()))
      first, last = 1, max(marks)   # step 1's mark comes after the first (compiling) decode step
      return batch * (last - first) / (marks[last] - marks[first])
    timer()   # compiles prefill and step
    timers[method] = timer
  return _interleaved(timers, rounds)


def _aggregate(results: list[dict]) -> list[dict]:
  """One row per method (and per equal-FLOPs baseline): mean +- std over the seeds; each method's
  difference in perplexity from the baseline at equal steps and at equal training FLOPs."""
  rows = []
  for label in dict.fromkeys(r.get("label", r["method"]) for r in results):
    rs = [r for r in results if r.get("label", r["method"]) == label]
    row = {"method": label, "seeds": [r["seed"] for r in rs], "equal_flops_with": rs[0].get("equal_flops_with"),
           "steps": rs[0].get("steps"), "per_seed": {str(r["seed"]): r["eval_perplexity"] for r in rs}}
    for key in ("eval_loss", "eval_perplexity"):
      row[key], row[key + "_std"] = sweep_results.mean_std([r[key] for r in rs])
    for key in ("resident_params", "training_params", "offloaded_entries", "train_flops_per_token",
                "train_tokens_per_s", "decode_tokens_per_s"):
      row[key] = rs[0][key]
    rows.append(row)
  base = next((r for r in rows if r["method"] == "baseline"), None)
  for row in rows:
    if base is None or row is base or row["equal_flops_with"]:
      continue
    flops = next((b for b in rows if b["equal_flops_with"] == row["method"]), base)
    for name, ref in (("equal_steps", base), ("equal_flops", flops)):
      # seed by seed, as the sweep's table (a seed fixes both runs' data order and initialisation)
      delta = sweep_results.paired_delta(row, {**ref, "steps": ref["steps"] or 0})
      if delta is not None:
        row[f"delta_{name}"] = delta
        row[f"{name}_baseline"] = ref["method"]
  return rows


def _table_md(table: list[dict]) -> str:
  base = next((r for r in table if r["method"] == "baseline"), None)
  pm = lambda r, k, fmt: format(r[k], fmt) + (f" ± {format(r[k + '_std'], fmt)}" if len(r["seeds"]) > 1 else "")

  def delta(r, name):
    d = r.get(f"delta_{name}")
    if d is None:
      return "-"
    spread = f" ± {d['std']:.2f}" if d["seeds"] > 1 else ""
    return f"{d['mean']:+.2f}{spread} ({d['lower']}/{d['seeds']} lower" + (
        f"; {r[f'{name}_baseline']})" if name == "equal_flops" else ")")
  lines = ["| method | validation loss | perplexity | Δ ppl vs baseline, equal steps | Δ ppl vs baseline, equal "
           "training FLOPs | resident params (inference) | training-only params | offloaded table entries "
           "| train tokens/s | decode tokens/s |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for r in table:
    extra = ""
    if base is not None and r is not base and r["resident_params"] != base["resident_params"]:
      extra = f" ({r['resident_params'] - base['resident_params']:+,})"
    name = r["method"] + (f" (equal FLOPs with {r['equal_flops_with']})" if r["equal_flops_with"] else "")
    lines.append(f"| {name} | {pm(r, 'eval_loss', '.4f')} | {pm(r, 'eval_perplexity', '.2f')} | "
                 f"{delta(r, 'equal_steps')} | {delta(r, 'equal_flops')} | "
                 f"{r['resident_params']:,}{extra} | {r['training_params']:,} | {r['offloaded_entries']:,} | "
                 f"{r['train_tokens_per_s']:,.0f} | {r['decode_tokens_per_s']:,.0f} |")
  return "\n".join(lines) + "\n"


def _write(out: str, args, table: list[dict], results: list[dict], log: _Log, seconds: float) -> None:
  import jax
  with open(os.path.join(out, "table.json"), "w") as f:
    json.dump({"table": table, "runs": [{k: v for k, v in r.items() if k != "train_losses"} for r in results],
               "steps": args.steps, "seeds": args.seeds}, f, indent=2)
  mesh = f"{args.devices}-device CPU mesh" if args.devices > 1 else "one CPU device"
  notes = (f"\nSame main model for every method (models/demo.gin + {args.run_file}: d 128, 3 layers, d_ff 512, "
           f"|V| 4096, {args.steps} steps of 16 x 128 tokens, seeds {', '.join(map(str, args.seeds))}), {mesh}. "
           "Validation loss and perplexity over the whole validation split; mean ± sample std over the seeds. "
           "Δ ppl: the method's perplexity minus the baseline's, seed by seed (a seed fixes both runs' data order "
           "and initialisation), mean ± sample std of those differences and how many seeds are lower; at equal "
           "training FLOPs the baseline trained the steps at which it has used the method's planned training FLOPs "
           "(A_f's planned bound included; docs/METHODS.md 4), named in parentheses. "
           "Resident parameters are what the accelerator holds at inference: LongCat's n-gram tables and "
           "STEM's tables are served from the device today (issue 14), so they count resident; SCONE's f-gram "
           "table is read from host RAM. "
           "Throughput is measured side by side after training, the methods taking turns (median of "
           f"the rounds): train tokens/s = the jitted train step on the {mesh} (16 x 128 tokens); "
           f"decode tokens/s = scone_jax.serve on one CPU device, {args.decode_batch} sequences, "
           f"{args.decode_tokens} teacher-forced steps after a 16-token prompt (SCONE: exported table in "
           "host RAM; n-gram: host hashing, tables on the device; STEM: tables on the device). CPU numbers on a "
           "2-core machine: they rank the methods' overheads at this tiny size, nothing more.\n")
  if getattr(args, "reused", None):
    notes += "\nRuns reused from the sweep `--runs_from` names (each checked to be the run compare would train):\n\n"
    notes += "".join(f"- {line}\n" for line in args.reused)
  with open(os.path.join(out, "table.md"), "w") as f:
    f.write("# Baseline vs SCONE vs LongCat n-gram hashing vs STEM\n\n" + _table_md(table) + notes)
  _plot(os.path.join(out, "compare.png"), table, results)
  commit = _git("rev-parse", "HEAD")
  dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
  argv = ["scone-jax", "compare", "--out", args.out, "--work", args.work, "--steps", str(args.steps),
          "--seeds", *map(str, args.seeds)]
  for flag, value, default in (("--data", args.data, None), ("--run_file", args.run_file, "runs/demo.gin"),
                               ("--devices", args.devices, DEVICES), ("--baselines", args.baselines, "equal_steps"),
                               ("--runs_from", args.runs_from, None), ("--fgrams", args.fgrams, 16384),
                               ("--max_n", args.max_n, 4)):
    if value != default:
      argv += [flag, str(value)]
  with open(os.path.join(out, "COMMANDS.md"), "w") as f:
    f.write("# How results/compare was made\n\n")
    f.write(f"From the repository root at commit `{commit}`{' (with uncommitted changes)' if dirty else ''}:\n\n")
    f.write("```\n" + shell_join(argv) + "\n```\n\n")
    staged = sum(s for _, s in log.commands)
    f.write(f"On {os.cpu_count()} CPU cores, jax {jax.__version__}, {jax.device_count()} CPU devices: the stages "
            f"below took {staged / 60:.1f} min in all (over every invocation; a rerun skips finished stages); "
            f"the last invocation took {seconds / 60:.1f} min.\n\n")
    f.write("| seconds | command |\n|---:|---|\n")
    for cmd, s in log.commands:
      f.write(f"| {s:.0f} | `scone-jax {cmd}` |\n")


def _git(*argv: str) -> str:
  try:
    return subprocess.run(["git", *argv], capture_output=True, text=True, check=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def _plot(path: str, table: list[dict], results: list[dict]) -> None:
  plt = pyplot()
  fig = figure(table, results)
  fig.savefig(path, dpi=120)
  plt.close(fig)


def figure(table: list[dict], results: list[dict]):
  """Training loss of the first seed, and validation perplexity per method: mean +- std over the
  seeds as points with error bars, the baseline as a band, the y-axis from sweep_results.y_limits
  (a rounded value below the lowest point minus its error: differences are not blown up)."""
  plt = pyplot()
  fig, (ax_loss, ax_ppl) = plt.subplots(1, 2, figsize=(11, 4))
  for r in results:
    if r["seed"] == results[0]["seed"] and r["train_losses"]:
      steps, losses = zip(*r["train_losses"])
      ax_loss.plot(steps, losses, marker="o", ms=3, label=r.get("label", r["method"]))
  ax_loss.set(xlabel="step", ylabel="train loss", title=f"training loss (seed {results[0]['seed']})")
  ax_loss.legend()
  means = [r["eval_perplexity"] for r in table]
  stds = [r["eval_perplexity_std"] for r in table]
  lows, highs = [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)]
  base = next((r for r in table if r["method"] == "baseline"), None)
  if base is not None:
    ax_ppl.axhspan(base["eval_perplexity"] - base["eval_perplexity_std"],
                   base["eval_perplexity"] + base["eval_perplexity_std"], color="k", alpha=0.1)
    ax_ppl.axhline(base["eval_perplexity"], color="k", linestyle="--", linewidth=1, label="baseline (mean ± std)")
  for i, r in enumerate(table):
    ax_ppl.errorbar([i], [r["eval_perplexity"]], yerr=[r["eval_perplexity_std"]], marker="o", capsize=4,
                    color=f"C{i}", linestyle="none")
    ax_ppl.annotate(f"{r['eval_perplexity']:.2f}", (i, r["eval_perplexity"]), textcoords="offset points",
                    xytext=(8, 0), va="center")
  ax_ppl.set_xticks(range(len(table)), [r["method"] for r in table])
  ax_ppl.set_xlim(-0.5, len(table) - 0.5)
  ax_ppl.set_ylim(*sweep_results.y_limits(lows, highs))
  seeds = len(table[0]["seeds"]) if table else 0
  ax_ppl.set(ylabel="validation perplexity (lower is better)",
             title=f"validation perplexity, mean ± std over {seeds} seed(s)")
  if base is not None:
    ax_ppl.legend(fontsize=8)
  fig.tight_layout()
  return fig
