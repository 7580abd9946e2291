"""`scone-jax sweep`: the two SCONE scaling knobs (|V_f| and A_f size) and K, against a baseline.

Builds one f-gram file per K at the largest |V_f| (a prefix of the global ranking is exactly V_f
for a smaller S, so `FgramConfig.size` selects it), trains every grid point plus baseline runs on
the same main model, and collects DIR/table.md, DIR/table.json and two plots like the paper's
figures 6 and 7: perplexity vs |V_f| per A_f size, and vs A_f size per |V_f|, the baseline drawn
as a line (its seed range shaded). Finished runs (RUN/summary.json) are skipped, so an
interrupted sweep resumes. `--emit` prints the commands instead, for a cluster (see launch/).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import statistics
import subprocess
import sys

from scone_jax import cli
from scone_jax.errors import UserError


def _ints(text: str) -> list[int]:
  try:
    return [int(x) for x in text.split(",") if x]
  except ValueError as e:
    raise UserError(f"expected comma-separated integers, got {text!r}") from e


def add_arguments(p: argparse.ArgumentParser) -> None:
  p.add_argument("--data", required=True, help="prepared DATA directory")
  p.add_argument("--out", required=True, help="sweep directory: f-grams, runs, table, plots")
  p.add_argument("--gin_file", action="append", default=None, help="model and run files of the main model, repeatable (default models/demo.gin runs/miniature.gin; SCONE runs add methods/scone.gin)")
  p.add_argument("--sizes", type=_ints, default=[4096, 16384, 65536], help="|V_f| values")
  p.add_argument("--fgram_layers", type=_ints, default=[1, 2], help="A_f depths (the A_f size knob)")
  p.add_argument("--fgram_width", type=int, default=0, help="A_f width d_f (0 = main width)")
  p.add_argument("--max_n", type=_ints, default=[4], help="K values")
  p.add_argument("--min_count", type=int, default=5)
  p.add_argument("--seeds", type=_ints, default=[0], help="seeds of every SCONE grid point")
  p.add_argument("--baseline_seeds", type=_ints, default=[0, 1])
  p.add_argument("--main_seeds", type=_ints, default=[1],
                 help="extra seeds for the main comparison point (largest |V_f|, smallest A_f, first K)")
  p.add_argument("--steps", type=int, default=None, help="TRAIN_STEPS for every run")
  p.add_argument("--binding", action="append", default=[], help="extra gin binding for every run, NAME=VALUE")
  p.add_argument("--emit", action="store_true", help="print the commands instead of running them")
  p.add_argument("--collect_only", action="store_true", help="only (re)write the table and plots")


@dataclasses.dataclass(frozen=True)
class Point:
  method: str            # baseline | scone
  seed: int
  size: int = 0
  layers: int = 0
  max_n: int = 0

  @property
  def name(self) -> str:
    if self.method == "baseline":
      return f"baseline_seed{self.seed}"
    return f"scone_k{self.max_n}_v{self.size}_af{self.layers}_seed{self.seed}"


def grid(args) -> list[Point]:
  points = [Point("baseline", s) for s in args.baseline_seeds]
  for k in args.max_n:
    for size in args.sizes:
      for layers in args.fgram_layers:
        for seed in args.seeds:
          points.append(Point("scone", seed, size, layers, k))
  main = Point("scone", 0, max(args.sizes), min(args.fgram_layers), args.max_n[0])
  points += [dataclasses.replace(main, seed=s) for s in args.main_seeds if s not in args.seeds]
  return points


def _fg_dir(args, k: int) -> str:
  return os.path.join(os.path.abspath(args.out), f"fgrams_k{k}")


def train_argv(args, p: Point) -> list[str]:
  files = args.gin_file or ["models/demo.gin", "runs/miniature.gin"]
  argv = ["train"] + [w for f in files for w in ("--gin_file", f)]
  if p.method == "scone":
    argv += ["--gin_file", "methods/scone.gin", f"--gin.FGRAM_DIR='{_fg_dir(args, p.max_n)}'",
             f"--gin.FgramConfig.size={p.size}", f"--gin.FgramConfig.num_layers={p.layers}",
             f"--gin.FgramConfig.d_model={args.fgram_width}"]
  argv += [f"--gin.DATA_DIR='{os.path.abspath(args.data)}'", f"--gin.SEED={p.seed}"]
  if args.steps:
    argv.append(f"--gin.TRAIN_STEPS={args.steps}")
  argv += [f"--gin.{b}" for b in args.binding]
  return argv + ["--workdir", os.path.join(os.path.abspath(args.out), "runs", p.name), "--quiet"]


def build_argv(args, k: int) -> list[str]:
  return ["fgrams", "build", "--data", os.path.abspath(args.data), "--max_n", str(k), "--size",
          str(max(args.sizes)), "--min_count", str(args.min_count), "--out", _fg_dir(args, k)]


def run(args) -> int:
  points = grid(args)
  if args.emit:
    for k in args.max_n:
      print(shlex.join(["scone-jax", *build_argv(args, k)]))
    for p in points:
      print(shlex.join(["scone-jax", *train_argv(args, p)]))
    return 0
  if not args.collect_only:
    env = dict(os.environ)
    for k in args.max_n:
      if not os.path.isfile(os.path.join(_fg_dir(args, k), "meta.json")):
        if cli.main(build_argv(args, k)):
          raise UserError(f"building the K={k} f-grams failed (see above)")
    for i, p in enumerate(points):
      summary = os.path.join(args.out, "runs", p.name, "summary.json")
      if os.path.isfile(summary):
        print(f"[{i + 1}/{len(points)}] {p.name}: done before", flush=True)
        continue
      print(f"[{i + 1}/{len(points)}] {p.name}: training", flush=True)
      # One process per run: no state (compiled programs, threads, gin) carries from run to run.
      rc = subprocess.run([sys.executable, "-m", "scone_jax.cli", *train_argv(args, p)], env=env).returncode
      if rc:
        raise UserError(f"run {p.name} failed with exit code {rc} (see above); rerun the sweep to resume")
  rows = collect(args, points)
  write_table(args.out, rows)
  plot(args.out, rows)
  print(open(os.path.join(args.out, "table.md")).read())
  return 0


def collect(args, points: list[Point]) -> list[dict]:
  rows = []
  for p in points:
    path = os.path.join(args.out, "runs", p.name, "summary.json")
    if not os.path.isfile(path):
      continue
    with open(path) as f:
      s = json.load(f)
    a = s["accounting"]
    rows.append({"run": p.name, "method": p.method, "seed": p.seed, "max_n": p.max_n, "fgrams": p.size,
                 "fgram_layers": p.layers, "perplexity": s["eval_perplexity"], "loss": s["eval_loss"],
                 "resident_params": a["resident_params"], "training_params": a["training_params"],
                 "offloaded_entries": a["offloaded_entries"], "train_tokens_per_s": s.get("train_tokens_per_s", 0.0)})
  if not rows:
    raise UserError(f"no finished runs under {args.out}/runs")
  return rows


def write_table(out: str, rows: list[dict]) -> None:
  with open(os.path.join(out, "table.json"), "w") as f:
    json.dump(rows, f, indent=2)
  head = ("run", "K", "|V_f|", "A_f layers", "val ppl", "resident params", "training-only params",
          "offloaded entries", "train tok/s")
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    lines.append(f"| {r['run']} | {r['max_n'] or '-'} | {r['fgrams'] or '-'} | {r['fgram_layers'] or '-'} | "
                 f"{r['perplexity']:.2f} | {r['resident_params']:,} | {r['training_params']:,} | "
                 f"{r['offloaded_entries']:,} | {r['train_tokens_per_s']:,.0f} |")
  with open(os.path.join(out, "table.md"), "w") as f:
    f.write("\n".join(lines) + "\n")


def plot(out: str, rows: list[dict]) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  base = [r["perplexity"] for r in rows if r["method"] == "baseline"]
  scone = [r for r in rows if r["method"] == "scone"]
  if not scone:
    return
  k0 = scone[0]["max_n"]
  scone = [r for r in scone if r["max_n"] == k0]

  def mean_by(key_fn):
    groups: dict = {}
    for r in scone:
      groups.setdefault(key_fn(r), []).append(r["perplexity"])
    return {k: statistics.mean(v) for k, v in groups.items()}

  by = mean_by(lambda r: (r["fgram_layers"], r["fgrams"]))
  for fig_name, series_key, x_key, xlabel in (
      ("ppl_vs_fgrams.png", 0, 1, "|V_f| (f-grams)"),
      ("ppl_vs_fgram_model.png", 1, 0, "A_f layers")):
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for s in sorted({k[series_key] for k in by}):
      pts = sorted((k[x_key], v) for k, v in by.items() if k[series_key] == s)
      label = f"A_f {s} layer(s)" if series_key == 0 else f"|V_f| = {s:,}"
      ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    if base:
      ax.axhline(statistics.mean(base), color="k", linestyle="--", label="baseline")
      ax.axhspan(min(base), max(base), color="k", alpha=0.08)
    if x_key == 1:
      ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("validation perplexity")
    ax.set_title(f"SCONE, K={k0}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, fig_name), dpi=120)
    plt.close(fig)
