"""`scone-jax bench train`: MFU of the real train step against this host's measured matmul peak.

In one run: the peak FLOP/s of a large float32 matmul on the local devices, then the baseline
model's train step and the same main model with SCONE (A_f on the batch's distinct f-grams),
timed in ROUNDS alternating rounds of --steps steps each (the speed ratio is the median of the
rounds' ratios: a drift of the shared host hits both models alike). The batch is a real one:
the training pipeline's batch of --data with the f-grams of --fgrams (default: the demo's, `make
demo`), so the distinct f-grams, their shared prefixes and A_f's packed rows are those training
sees; both models train on its tokens. `--synthetic` times random tokens with random f-grams
instead (no shared prefixes: a reference, not the target). MFU counts model FLOPs only
(models/accounting.py): for SCONE, A_f's FLOPs on the needed slots (the nodes of the batch's
f-gram prefix tree, fgram/packing.py), not the padding executed with them.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

ROUNDS = 5  # alternating timing rounds of the two models


def add_arguments(p: argparse.ArgumentParser) -> None:
  p.add_argument("--data", default="demo_out/data", help="prepared DATA whose train batches are timed (default: the demo's)")
  p.add_argument("--fgrams", default="demo_out/fgrams", help="f-gram directory FG of --data (default: the demo's)")
  p.add_argument("--synthetic", action="store_true",
                 help="random tokens and random f-grams (--vocab_size, --max_n, --distinct_fraction) instead of --data")
  p.add_argument("--d_model", type=int, default=384)
  p.add_argument("--num_layers", type=int, default=2)
  p.add_argument("--d_ff", type=int, default=1536)
  p.add_argument("--num_heads", type=int, default=6)
  p.add_argument("--vocab_size", type=int, default=4096, help="--synthetic only (else the data's)")
  p.add_argument("--seq_len", type=int, default=256)
  p.add_argument("--batch_size", type=int, default=16)
  p.add_argument("--steps", type=int, default=6, help="timed steps per model and round (after 2 warm-up steps)")
  p.add_argument("--max_n", type=int, default=4, help="K of the synthetic f-gram vocabulary (--synthetic only)")
  p.add_argument("--distinct_fraction", type=float, default=0.25,
                 help="distinct f-grams per batch as a fraction of its tokens (--synthetic only)")
  p.add_argument("--fgram_layers", type=int, default=1)
  p.add_argument("--skip_scone", action="store_true")
  p.add_argument("--scan_layers", type=int, default=1, help="1: scanned layers (as trained), 0: unrolled")


class _Stepper:
  """A model's jitted train step, warmed up (2 steps), timed a round of steps at a time, so that
  two models' rounds can alternate: slow drifts of a shared host then hit both alike."""

  def __init__(self, trainer, batch):
    import jax
    self.trainer = trainer
    with jax.set_mesh(trainer.mesh):
      self.state = trainer.init()
      self.step_fn = trainer.jit_train_step(batch)
      self.gbatch = trainer.global_batch(batch, batch["inputs"].shape[0])
      for _ in range(2):
        self.state, m = self.step_fn(self.state, self.gbatch)
      jax.block_until_ready(m)
    self.times: list[float] = []

  def round(self, steps: int) -> float:
    """Times `steps` steps; returns their median (all are kept in self.times)."""
    import jax
    times = []
    with jax.set_mesh(self.trainer.mesh):
      for _ in range(steps):
        t0 = time.perf_counter()
        self.state, m = self.step_fn(self.state, self.gbatch)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    self.times += times
    return statistics.median(times)


def _synthetic_batches(args, granularity):
  """Random tokens; a random V_f of lengths 2..K, every f-gram used in the batch (no shared
  prefixes beyond chance). Returns (vocab size, K, baseline batch, SCONE batch)."""
  import numpy as np

  from scone_jax.methods.scone import DistinctFgrams, PackedFgrams
  rng = np.random.default_rng(0)
  b, l, k, v = args.batch_size, args.seq_len, args.max_n, args.vocab_size
  batch = {"inputs": rng.integers(4, v, (b, l)).astype(np.int32), "targets": rng.integers(4, v, (b, l)).astype(np.int32),
           "segment_ids": np.ones((b, l), np.int32), "positions": np.tile(np.arange(l, dtype=np.int32), (b, 1))}
  u = max(8, int(args.distinct_fraction * b * l))
  grams = sorted({tuple(rng.integers(4, v, n).tolist()) for n in rng.integers(2, k + 1, u)})
  fgram_id = np.where(rng.random((b, l)) < 0.6, rng.integers(0, len(grams), (b, l)), -1).astype(np.int32)
  fgram_id.reshape(-1)[:len(grams)] = np.arange(len(grams))   # every f-gram is used
  # Where fgram_id marks an f-gram, the position's last K-1 inputs and itself hold its tokens (the
  # pipeline's History and match lengths), so the batch's dedup finds exactly these f-grams.
  history = np.full((b, l, k - 1), -1, np.int32)
  match_len = np.ones((b, l), np.int32)
  inputs = batch["inputs"].copy()
  for pos in zip(*np.nonzero(fgram_id >= 0)):
    g = grams[fgram_id[pos]]
    inputs[pos], history[pos][k - len(g):], match_len[pos] = g[-1], g[:-1], len(g)
  sbatch = {**batch, "inputs": inputs, "history": history, "match_len": match_len}
  features = DistinctFgrams(PackedFgrams(k), granularity=granularity, sample=lambda: [sbatch])
  return v, k, {**batch, "inputs": inputs}, features(sbatch)


def _data_batches(args, granularity):
  """The first train batch of --data through the SCONE pipeline with --fgrams (matching, the
  distinct f-grams, A_f's packed rows). Returns (vocab size, K, baseline batch, SCONE batch)."""
  import os

  from scone_jax import experiment
  from scone_jax.data import pipeline
  from scone_jax.errors import UserError
  for path, what in ((args.data, "--data"), (args.fgrams, "--fgrams")):
    if not os.path.isfile(os.path.join(path, "meta.json")):
      raise UserError(f"{what} {path!r} has no meta.json: run `make demo` first, pass {what}, or pass --synthetic")
  exp = experiment.load(["models/tiny.gin", "methods/scone.gin", "runs/cpu.gin"],
                        [f"DATA_DIR = '{os.path.abspath(args.data)}'", f"FGRAM_DIR = '{os.path.abspath(args.fgrams)}'",
                         f"DataConfig.batch_size = {args.batch_size}", f"DataConfig.seq_len = {args.seq_len}"])
  spec = exp.pipeline_spec("train", batch_devices=granularity, prefetch=0)
  sbatch = next(iter(pipeline.make_dataset(spec)))
  batch = {k: sbatch[k] for k in ("inputs", "targets", "segment_ids", "positions")}
  print(f"bench train: batches of {args.data} ({args.batch_size} x {args.seq_len}) with the f-grams of {args.fgrams} "
        f"(|V_f| {exp.method.num_fgrams:,}, K {exp.method.max_n})", flush=True)
  return exp.model.vocab_size, exp.method.max_n, batch, sbatch


def run(args) -> int:
  import jax

  from scone_jax import parallel
  from scone_jax.config import MeshConfig, ModelConfig, TrainConfig
  from scone_jax.methods.scone import DistinctFgrams, FgramConfig, PackedFgrams, SconeEmbedding
  from scone_jax.models import accounting, build_model
  from scone_jax.train.metrics import measure_matmul_peak
  from scone_jax.train.state import Trainer

  b, l = args.batch_size, args.seq_len
  mesh = parallel.make_mesh(MeshConfig(data=-1), jax.local_devices())
  granularity = mesh.shape["data"] * mesh.shape["fsdp"]
  if b % granularity:
    from scone_jax.errors import UserError
    raise UserError(f"--batch_size {b} is not divisible by the {granularity} local devices the batch is split over: "
                    f"pass a multiple of {granularity}")
  vocab_size, k, batch, sbatch = (_synthetic_batches if args.synthetic else _data_batches)(args, granularity)
  cfg = ModelConfig(vocab_size=vocab_size, d_model=args.d_model, num_layers=args.num_layers,
                    num_heads=args.num_heads, num_kv_heads=max(1, args.num_heads // 2), d_ff=args.d_ff,
                    max_seq_len=l, remat_policy="none", scan_layers=bool(args.scan_layers))
  tcfg = TrainConfig(steps=1000, warmup_steps=10)

  peak = measure_matmul_peak(n=1024, repeats=5)
  print(f"bench train: peak {peak / 1e9:.1f} GFLOP/s (float32 1024x1024 matmul, {jax.local_device_count()} "
        f"{jax.local_devices()[0].device_kind} device(s))", flush=True)

  base_trainer = Trainer(cfg, tcfg, mesh, lambda: build_model(cfg, 0))
  base_acct = accounting.account(cfg, base_trainer.abstract_params, l)
  base = _Stepper(base_trainer, batch)

  def report_baseline():
    t = statistics.median(base.times)
    mfu = base_acct.train_flops_per_token * b * l / t / peak
    print(f"bench train: baseline {base_acct.resident_params:,} params, step {t * 1e3:.1f} ms, "
          f"{b * l / t:,.0f} tok/s, {base_acct.train_flops_per_token * b * l / t / 1e9:.1f} GFLOP/s, MFU {mfu:.1%}",
          flush=True)
    return t, mfu

  if args.skip_scone:
    for _ in range(ROUNDS):
      base.round(args.steps)
    report_baseline()
    return 0

  scfg = dataclasses.replace(cfg, embedding="scone")
  fcfg = FgramConfig(num_layers=args.fgram_layers)
  needed_slots, executed_slots, needed_fgrams, executed_entries = (int(x) for x in sbatch.pop("stat_train_only_work"))
  fgram_tokens = int(DistinctFgrams(PackedFgrams(k)).distinct(sbatch)[2].sum())
  scone_trainer = Trainer(scfg, tcfg, mesh, lambda: build_model(scfg, 0, input_embedding=lambda r: SconeEmbedding(scfg, fcfg, k, r)))
  fmodel = fcfg.model_config(scfg)
  per_slot = accounting.decoder_forward_flops(fmodel, k)
  needed_flops = base_acct.train_flops_per_token * b * l + 3 * per_slot * needed_slots
  scone = _Stepper(scone_trainer, sbatch)
  speeds = []
  for _ in range(ROUNDS):   # alternating rounds: the ratio of each round, then their median
    speeds.append(base.round(args.steps) / scone.round(args.steps))
  t, base_mfu = report_baseline()
  t_scone = statistics.median(scone.times)
  scone_mfu = needed_flops / t_scone / peak
  print(f"bench train: scone (A_f {args.fgram_layers} layer(s), K={k}, {needed_fgrams:,} distinct f-grams/batch, "
        f"{fgram_tokens:,} tokens in them, {needed_slots:,} prefix-tree nodes) step {t_scone * 1e3:.1f} ms, "
        f"{b * l / t_scone:,.0f} tok/s, MFU {scone_mfu:.1%} (needed A_f FLOPs)", flush=True)
  ratio = executed_slots / needed_slots
  print(f"bench train: A_f token slots executed {executed_slots:,} / needed {needed_slots:,} = {ratio:.2f} "
        f"(target <= 1.25) {'PASS' if ratio <= 1.25 else 'FAIL'}; {executed_slots / fgram_tokens:.2f}x the f-grams' "
        "tokens", flush=True)
  print(f"bench train: MFU baseline {base_mfu:.1%} (target >= 35%) {'PASS' if base_mfu >= 0.35 else 'FAIL'}", flush=True)
  speed = statistics.median(speeds)
  print(f"bench train: tokens/s scone/baseline {speed:.3f} (median of {ROUNDS} alternating rounds of {args.steps} "
        f"steps: {', '.join(f'{x:.3f}' for x in speeds)}; target >= 0.85) {'PASS' if speed >= 0.85 else 'FAIL'}",
        flush=True)
  return 0
