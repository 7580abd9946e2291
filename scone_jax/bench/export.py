"""`scone-jax bench export`: the export's write throughput against this disk's sequential write
throughput, measured side by side in one run.

  disk        one file of the store's size written sequentially (16 MiB writes) and fsync'd,
              in the directory the store goes to; measured before and after the exports (mean)
  export      the real export (writer.export_table with AfRows: A_f jitted over the local
              devices' mesh, the store dtype conversion, tensorstore shard writes, hashes,
              markers, manifest) of a synthetic V_f of S f-grams, on a randomly initialised model
  writer      the same export with the rows already computed (a constant block): what the
              writing side sustains when A_f is not the bottleneck (an accelerator's A_f);
              the goal (>= 0.5 of the disk) is judged on this line, because on a CPU host A_f's
              compute, not the writing, limits the full export (its line says how much)
Throughput = bytes of the embeddings (+ scales) and f-gram keys written / wall time of the export,
compilation excluded (A_f is compiled before the clock starts).
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import numpy as np

from scone_jax.bench.lookup import synthetic_vocab
from scone_jax.errors import UserError

GOAL = 0.5
WRITE_BLOCK = 16 << 20


def add_arguments(p: argparse.ArgumentParser) -> None:
  p.add_argument("--rows", type=int, default=1 << 18, help="S, f-grams exported")
  p.add_argument("--d_model", type=int, default=1024, help="d, the main model's width (row width)")
  p.add_argument("--fgram_d_model", type=int, default=64, help="A_f's width d_f (projections d <-> d_f)")
  p.add_argument("--fgram_layers", type=int, default=1)
  p.add_argument("--vocab_size", type=int, default=32768)
  p.add_argument("--max_n", type=int, default=4)
  p.add_argument("--dtype", default="float16", choices=("float32", "bfloat16", "float16", "int8"))
  p.add_argument("--dir", default=None, help="where to write (default: a temp dir under /tmp)")
  p.add_argument("--seed", type=int, default=0)


def sequential_write_bytes_per_s(directory: str, nbytes: int) -> float:
  """Writes nbytes to a new file in 16 MiB writes, fsyncs it, deletes it; bytes/s."""
  block = np.random.default_rng(0).integers(0, 256, WRITE_BLOCK, dtype=np.uint8).tobytes()
  path = os.path.join(directory, "sequential_write.bin")
  t0 = time.perf_counter()
  fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
  try:
    left = nbytes
    while left > 0:
      left -= os.write(fd, block[:min(left, WRITE_BLOCK)])
    os.fsync(fd)
  finally:
    os.close(fd)
  seconds = time.perf_counter() - t0
  os.remove(path)
  return nbytes / seconds


def run(args) -> int:
  import jax
  from flax import nnx

  from scone_jax import parallel
  from scone_jax.config import DataConfig, MeshConfig, ModelConfig, TrainConfig
  from scone_jax.export import layout as L
  from scone_jax.export.manifest import Identity
  from scone_jax.export.writer import AfRows, export_table
  from scone_jax.methods.scone import FgramConfig, Scone
  from scone_jax.train.state import Trainer
  if args.rows < 1000:
    raise UserError("need --rows >= 1000")
  rng = np.random.default_rng(args.seed)
  root = tempfile.mkdtemp(prefix="scone_bench_export_", dir=args.dir)
  try:
    vocab, _ = synthetic_vocab(rng, args.rows, args.max_n, args.vocab_size)
    tokens, lengths = vocab.token_matrix()
    cfg = ModelConfig(vocab_size=args.vocab_size, d_model=args.d_model, num_layers=1, num_heads=8, num_kv_heads=4,
                      d_ff=4 * args.d_model, embedding="scone", remat_policy="none")
    fcfg = FgramConfig(num_layers=args.fgram_layers, d_model=args.fgram_d_model, num_heads=4, num_kv_heads=2,
                       d_ff=4 * args.fgram_d_model)
    build = lambda: Scone(cfg, DataConfig(), fcfg, vocab).build_model(args.seed)
    trainer = Trainer(cfg, TrainConfig(), parallel.make_mesh(MeshConfig(data=-1, fsdp=1, tensor=1)), build)
    params = jax.device_put(nnx.to_pure_dict(nnx.split(build(), nnx.Param)[1]), trainer.param_shardings)
    rows_per_shard = L.default_rows_per_shard(args.rows, args.d_model, args.dtype)
    lay = L.Layout(args.rows, args.d_model, args.max_n, args.dtype, rows_per_shard,
                   L.inner_rows_for(args.d_model, args.dtype, rows_per_shard))
    identity = Identity("synthetic", "synthetic", args.rows, args.d_model, args.max_n)
    af_rows = AfRows(trainer, params, args.dtype)
    block, scales = af_rows(tokens[:rows_per_shard], lengths[:rows_per_shard])   # compiles A_f
    const_rows = lambda t, n: (block[:len(t)], None if scales is None else scales[:len(t)])
    nbytes = sum(a.nbytes for a in (block, tokens[:rows_per_shard]) + (() if scales is None else (scales,)))
    nbytes = nbytes * args.rows // rows_per_shard
    print(f"bench export: S={args.rows:,} f-grams x d={args.d_model} {args.dtype} ({nbytes / 2**20:.0f} MiB with keys), "
          f"shards of {rows_per_shard} rows; A_f d_f={args.fgram_d_model}, {args.fgram_layers} layer(s), K={args.max_n}, "
          f"on {jax.device_count()} {jax.devices()[0].platform} device(s); writing to {root}", flush=True)
    disk = [sequential_write_bytes_per_s(root, nbytes)]
    results = {}
    for name, rows_fn in (("export", af_rows), ("writer", const_rows)):
      summary = export_table(os.path.join(root, name), lay, tokens, lengths, rows_fn, identity)
      assert summary["complete"]
      results[name] = summary["bytes_written"] / summary["seconds"]
    disk.append(sequential_write_bytes_per_s(root, nbytes))
    disk_rate = sum(disk) / len(disk)
    print(f"bench export: disk sequential write (fsync'd) {disk_rate / 1e6:.1f} MB/s "
          f"(before {disk[0] / 1e6:.1f}, after {disk[1] / 1e6:.1f})")
    for name, what in (("export", "export (A_f + write)"), ("writer", "export writer alone (rows precomputed)")):
      print(f"bench export: {what}: {results[name] / 1e6:.1f} MB/s, ratio to disk {results[name] / disk_rate:.2f}")
    writer, full = results["writer"] / disk_rate, results["export"] / disk_rate
    af_rate = results["export"] / (nbytes / args.rows)
    print(f"bench export: goal write throughput / disk >= {GOAL}: writer {writer:.2f} "
          f"{'PASS' if writer >= GOAL else 'FAIL'}; with A_f on this host {full:.2f} "
          f"(A_f at {af_rate:,.0f} f-grams/s here: {'compute' if full < 0.9 * writer else 'write'}-bound)")
  finally:
    shutil.rmtree(root, ignore_errors=True)
  return 0
