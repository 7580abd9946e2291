"""`scone-jax bench pipeline`: can the host feed the accelerator?

In one run: the tokens/s the full grain pipeline delivers on one thread (read, shuffle, pack,
f-gram matching per row, distinct f-grams per batch) and the tokens/s the tiny SCONE train step
consumes on this host's devices, on the same batches. Target: pipeline >= 10x the step.
"""
from __future__ import annotations

import argparse
import os
import time


def add_arguments(p: argparse.ArgumentParser) -> None:
  p.add_argument("--data", default="demo_out/data", help="prepared DATA (default: the demo's)")
  p.add_argument("--fgrams", default="demo_out/fgrams", help="f-gram directory FG (default: the demo's)")
  p.add_argument("--gin_file", action="append", default=None,
                 help="gin files, repeatable (default models/tiny.gin methods/scone.gin runs/cpu.gin)")
  p.add_argument("--batches", type=int, default=40, help="batches timed for the pipeline")
  p.add_argument("--steps", type=int, default=10, help="train steps timed")


def run(args) -> int:
  import jax
  import numpy as np

  from scone_jax import experiment, parallel
  from scone_jax.data import pipeline
  from scone_jax.errors import UserError
  from scone_jax.train.state import make_trainer

  for path, what in ((args.data, "--data"), (args.fgrams, "--fgrams")):
    if not os.path.isfile(os.path.join(path, "meta.json")):
      raise UserError(f"{what} {path!r} has no meta.json: run `make demo` first or pass {what}")
  files = args.gin_file or ["models/tiny.gin", "methods/scone.gin", "runs/cpu.gin"]
  exp = experiment.load(files, [f"DATA_DIR = '{os.path.abspath(args.data)}'",
                                f"FGRAM_DIR = '{os.path.abspath(args.fgrams)}'"])
  mesh = parallel.make_mesh(exp.mesh)
  trainer = make_trainer(exp, mesh)
  dcfg = exp.data
  spec = exp.pipeline_spec("train", batch_devices=trainer.batch_devices, prefetch=0)
  it = iter(pipeline.make_dataset(spec))
  batches = [next(it) for _ in range(3)]   # warm-up: open shards, build the matcher's table
  t0 = time.perf_counter()
  for _ in range(args.batches):
    batches.append(next(it))
  pipe_tps = args.batches * dcfg.batch_size * dcfg.seq_len / (time.perf_counter() - t0)
  print(f"bench pipeline: {pipe_tps:,.0f} tokens/s on one host thread (batch {dcfg.batch_size} x {dcfg.seq_len})",
        flush=True)
  for fn in spec.batch_features:   # what a method's batch features chose from the data (SCONE: A_f's buckets)
    if getattr(fn, "buckets", None) is not None:
      work = np.sum([b["stat_train_only_work"] for b in batches], axis=0)
      fgram_tokens = sum(int(fn.distinct(b)[2].sum()) for b in batches)
      print(f"bench pipeline: |V_f| {len(exp.method.fgram_vocab):,}, K {exp.method.max_n}: A_f rows of "
            f"{fn.source.row_len} slots, buckets (rows per process batch) {fn.buckets.sizes} chosen from "
            f"{exp.method.fgram.sample_batches} batches; over {len(batches)} batches {work[2] / len(batches):,.0f} "
            f"distinct f-grams per batch, their prefix trees {work[0] / fgram_tokens:.3f}x their tokens; A_f token "
            f"slots executed/needed {work[1] / work[0]:.3f} (target <= 1.25) "
            f"{'PASS' if work[1] <= 1.25 * work[0] else 'FAIL'}, {work[1] / fgram_tokens:.3f}x the f-grams' tokens",
            flush=True)
  with jax.set_mesh(mesh):
    state = trainer.init()
    step_fn = trainer.jit_train_step(batches[0])
    glob = [trainer.global_batch(b, dcfg.batch_size) for b in batches[:args.steps + 2]]
    shapes = {}
    for g in glob:   # compile once per static shape (A_f's buckets) before timing
      shapes.setdefault(tuple(sorted((k, v.shape) for k, v in g.items())), g)
    for g in shapes.values():
      state, m = step_fn(state, g)
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for g in glob[2:]:
      state, m = step_fn(state, g)
    jax.block_until_ready(m)
    step_tps = (len(glob) - 2) * dcfg.batch_size * dcfg.seq_len / (time.perf_counter() - t0)
  print(f"bench pipeline: tiny SCONE train step consumes {step_tps:,.0f} tokens/s on {jax.device_count()} device(s)")
  print(f"bench pipeline: ratio pipeline/step {pipe_tps / step_tps:.1f} (target >= 10)")
  return 0
