"""`scone-jax bench decode`: decoding tokens/s of a SCONE model whose f-gram rows come from the RAM
and disk tiers, divided by tokens/s of the same main model without SCONE.

One run: a synthetic V_f of S f-grams (the top n-grams of a Zipfian stream) and its store of
S x d rows (written by the exporter's writer), a randomly initialised main model (by default the
paper's WebText width, d=1024, ffw 4096, 4 layers, |V|=32768), and for batch sizes 1 and 16:
prompts from a fresh Zipfian stream and teacher-forced continuations of that stream, so every
step matches real f-grams and fetches their rows as generation of such text would (the share of
matched tokens is printed). Each variant runs the full generation loop (Decoder.generate:
device step, match of the new tokens, row fetch, next step); tokens/s counts decode steps after
the prefill, from the median step time. Variants are interleaved over --repeats rounds; the disk
tier starts every round with the store dropped from the page cache.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import statistics
import tempfile
import time

import numpy as np

from scone_jax.bench.lookup import drop_page_cache, histories, synthetic_vocab, write_synthetic_store
from scone_jax.errors import UserError

GOAL_RAM, GOAL_DISK = 0.97, 0.90


def add_arguments(p: argparse.ArgumentParser) -> None:
  p.add_argument("--rows", type=int, default=1 << 20, help="S, f-grams in the store")
  p.add_argument("--store_dtype", default="float16", choices=("float32", "bfloat16", "float16", "int8"))
  p.add_argument("--d_model", type=int, default=1024)
  p.add_argument("--num_layers", type=int, default=4)
  p.add_argument("--num_heads", type=int, default=8)
  p.add_argument("--num_kv_heads", type=int, default=4)
  p.add_argument("--d_ff", type=int, default=4096)
  p.add_argument("--vocab_size", type=int, default=32768)
  p.add_argument("--max_n", type=int, default=4)
  p.add_argument("--batches", default="1,16", help="comma-separated batch sizes")
  p.add_argument("--prompt_len", type=int, default=16)
  p.add_argument("--new_tokens", type=int, default=24, help="decode steps per generation")
  p.add_argument("--repeats", type=int, default=3, help="timed rounds (after one warm-up round)")
  p.add_argument("--cache_mb", type=int, default=64, help="disk tier: tensorstore cache pool size")
  p.add_argument("--dir", default=None, help="where to write the store (default: a temp dir under /tmp)")
  p.add_argument("--seed", type=int, default=0)


def _step_times(decoder, prompts, forced, bos: int) -> list[float]:
  """Runs one generation; the wall time of every decode step after the first (seconds)."""
  stamps = []
  decoder.generate(prompts, max_new_tokens=forced.shape[1], bos_id=bos, eos_id=-1, force_tokens=forced,
                   on_step=lambda t: stamps.append(time.perf_counter()))
  return list(np.diff(stamps))


def run(args) -> int:
  import jax
  from flax import nnx

  from scone_jax.config import ModelConfig
  from scone_jax.methods.base import TokenFeatures
  from scone_jax.methods.scone import FgramConfig, FgramDecodeFeatures, SconeEmbedding, StoreRows, matcher_from_tokens
  from scone_jax.models import build_model
  from scone_jax.serve.decode import Decoder
  from scone_jax.serve.store import open_store
  try:
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
  except ValueError:
    raise UserError(f"--batches {args.batches!r} is not a comma-separated list of integers") from None
  if not batches or min(batches) < 1 or args.new_tokens < 3 or args.repeats < 1:
    raise UserError("need batch sizes >= 1, --new_tokens >= 3 and --repeats >= 1")
  rng = np.random.default_rng(args.seed)
  root = tempfile.mkdtemp(prefix="scone_bench_decode_", dir=args.dir)
  url = os.path.join(root, "store")
  try:
    vocab, id_of_rank = synthetic_vocab(rng, args.rows, args.max_n, args.vocab_size)
    write_synthetic_store(url, vocab, args.d_model, args.store_dtype, rng)
    ram = open_store(url, "ram", verify=False)
    disk = open_store(url, "disk", verify=False, cache_bytes=args.cache_mb << 20)
    matcher = matcher_from_tokens(ram.fgram_tokens)
    sources = {"ram": FgramDecodeFeatures(matcher, StoreRows(ram)), "disk": FgramDecodeFeatures(matcher, StoreRows(disk))}
    main = ModelConfig(vocab_size=args.vocab_size, d_model=args.d_model, num_layers=args.num_layers,
                       num_heads=args.num_heads, num_kv_heads=args.num_kv_heads, d_ff=args.d_ff,
                       max_seq_len=args.prompt_len + args.new_tokens + 1, remat_policy="none")
    decoders, n_params = {}, 0
    scone_cfg = dataclasses.replace(main, embedding="scone")
    for name, cfg, kw in (("baseline", main, {}),
                          ("scone", scone_cfg, {"input_embedding": lambda r: SconeEmbedding(
                              scone_cfg, FgramConfig(num_layers=1), args.max_n, r)})):
      graphdef, params = nnx.split(build_model(cfg, args.seed, **kw))
      features = TokenFeatures() if name == "baseline" else sources["ram"]
      decoders[name] = Decoder(lambda p, g=graphdef: nnx.merge(g, p), params, cfg, features)
      n_params = n_params or sum(x.size for x in jax.tree.leaves(params))
    platform = jax.devices()[0].platform
    print(f"bench decode: main model d={args.d_model} ffw={args.d_ff} layers={args.num_layers} heads={args.num_heads}/"
          f"{args.num_kv_heads} |V|={args.vocab_size} ({n_params / 1e6:.0f}M parameters, float32, {platform}); "
          f"store S={args.rows:,} x {args.d_model} {args.store_dtype}; prompt {args.prompt_len}, "
          f"{args.new_tokens} forced decode steps, median step of {args.repeats} rounds", flush=True)
    ratios = {}
    for b in batches:
      stream = histories(rng, id_of_rank, b, args.prompt_len + args.new_tokens)
      prompts, forced = stream[:, :args.prompt_len], stream[:, args.prompt_len:].astype(np.int32)
      fgram_id, _ = matcher.match(stream)
      matched = float((fgram_id[:, args.prompt_len:] >= 0).mean())
      runs = {"baseline": [], "ram": [], "disk": []}

      def one(variant: str, prompts=prompts, forced=forced) -> list[float]:
        if variant == "baseline":
          return _step_times(decoders["baseline"], prompts, forced, 2)
        if variant == "disk":
          drop_page_cache(url)
        decoders["scone"].features = sources[variant]
        return _step_times(decoders["scone"], prompts, forced, 2)

      for variant in runs:   # warm-up: compiles, first reads
        one(variant)
      order = list(runs)
      for r in range(args.repeats):   # a different variant first in every round
        for variant in order[r % 3:] + order[:r % 3]:
          runs[variant] += one(variant)
      # Median step time: robust to other load on the host, which hits single steps.
      tps = {k: b / statistics.median(v) for k, v in runs.items()}
      ratios[b] = {k: tps[k] / tps["baseline"] for k in ("ram", "disk")}
      print(f"bench decode: batch {b:>2}: baseline {tps['baseline']:.1f} tok/s | SCONE ram {tps['ram']:.1f} tok/s "
            f"(ratio {ratios[b]['ram']:.3f}) | SCONE disk {tps['disk']:.1f} tok/s (ratio {ratios[b]['disk']:.3f}); "
            f"{matched:.0%} of decoded tokens matched an f-gram", flush=True)
    ok = all(r["ram"] >= GOAL_RAM and r["disk"] >= GOAL_DISK for r in ratios.values())
    print(f"bench decode: goal ram >= {GOAL_RAM}, disk >= {GOAL_DISK} at batch {', '.join(map(str, batches))}: "
          f"{'PASS' if ok else 'FAIL'}")
  finally:
    shutil.rmtree(root, ignore_errors=True)
  return 0
