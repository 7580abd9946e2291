"""`scone-jax bench lookup`: per-token query latency of the f-gram table against batch size, RAM
and disk tiers (the measurement of the SCONE paper's figure 4).

One run: a synthetic V_f (the top S n-grams of a Zipfian token stream, so the matcher has real
keys), a store of S rows x d written by the exporter's writer (synthetic row values), then for
batch sizes 1..64:
  fetch        rows of B distinct ids drawn uniformly from all S (every query a fresh row: the
               hardest access pattern), one read per batch
  match+fetch  what a decode step does: match the newest token of B histories taken from a fresh
               Zipfian stream (at most K-1 probes each), deduplicate, fetch
RAM tier first (the table loaded into host memory), then the disk tier with a cold page cache:
every store file is flushed and dropped with posix_fadvise(DONTNEED) (checked with mincore)
after one read per shard has put the shard indices in tensorstore's bounded cache. Latency per
token = median latency of a batch / B (the median: other load on a shared host preempts single
queries). Writes a PNG plot and prints one line per tier and size.
"""
from __future__ import annotations

import argparse
import ctypes
import mmap
import os
import shutil
import tempfile
import time

import numpy as np

from scone_jax.bench.match import top_fgrams, zipf_stream
from scone_jax.errors import UserError
from scone_jax.fgram.vocab import FgramMeta, FgramVocab
from scone_jax.outputs import pyplot

BATCHES = (1, 2, 4, 8, 16, 32, 64)
GOAL_BATCH, GOAL_RAM_MS, GOAL_DISK_MS = 16, 0.01, 0.25
PAPER = "paper: 0.017 ms (RAM) and 0.5 ms (NVMe) at batch 16"


def add_arguments(p: argparse.ArgumentParser) -> None:
  p.add_argument("--rows", type=int, default=1 << 20, help="S, rows of the table (default 1,048,576)")
  p.add_argument("--dim", type=int, default=1024, help="d, row width")
  p.add_argument("--dtype", default="float16", choices=("float32", "bfloat16", "float16", "int8"))
  p.add_argument("--max_n", type=int, default=4, help="K of the synthetic f-grams")
  p.add_argument("--vocab_size", type=int, default=32768)
  p.add_argument("--queries", type=int, default=200, help="timed queries per tier and batch size")
  p.add_argument("--cache_mb", type=int, default=64, help="disk tier: tensorstore cache pool size")
  p.add_argument("--dir", default=None, help="where to write the store (default: a temp dir under /tmp)")
  p.add_argument("--keep", action="store_true", help="keep the store")
  p.add_argument("--plot", default="bench_lookup.png", help="PNG to write")
  p.add_argument("--seed", type=int, default=0)


# -- shared with bench decode ------------------------------------------------------------------

def synthetic_vocab(rng, rows: int, max_n: int, vocab_size: int):
  """(FgramVocab of the top `rows` n-grams (2..K) of a Zipfian stream, id_of_rank for making
  more text of the same distribution)."""
  id_of_rank = (rng.permutation(vocab_size - 4) + 4).astype(np.int32)   # ids 0..3 are special
  corpus = zipf_stream(rng, max(4 * rows // 3, 10_000), id_of_rank, 1.1)
  flat, offsets = top_fgrams(corpus, rows, max_n)
  if len(offsets) - 1 < rows:
    raise UserError(f"the synthetic stream holds only {len(offsets) - 1} n-grams; lower --rows")
  meta = FgramMeta(max_n, rows, 1, len(corpus), "synthetic", rows, vocab_size)
  return FgramVocab(flat, offsets, np.ones(rows, np.int64), meta), id_of_rank


def write_synthetic_store(url: str, vocab, dim: int, dtype: str, rng) -> None:
  """A finished store of vocab's f-grams with synthetic rows, written by the exporter's writer."""
  from scone_jax.export import layout as L
  from scone_jax.export.manifest import Identity
  from scone_jax.export.writer import export_table
  rows_per_shard = L.default_rows_per_shard(len(vocab), dim, dtype)
  lay = L.Layout(len(vocab), dim, vocab.meta.max_n, dtype, rows_per_shard, L.inner_rows_for(dim, dtype, rows_per_shard))
  block = rng.standard_normal((rows_per_shard, dim), dtype=np.float32)
  scales = None
  if dtype == "int8":
    block, scales = np.clip(np.round(block * 40), -127, 127).astype(np.int8), np.full(rows_per_shard, 0.025, np.float32)
  else:
    block = block.astype(L.numpy_dtype(dtype))
  tokens, lengths = vocab.token_matrix()
  identity = Identity("synthetic", "synthetic", len(vocab), dim, vocab.meta.max_n)
  rows_fn = lambda t, n: (block[:len(t)], None if scales is None else scales[:len(t)])
  export_table(url, lay, tokens, lengths, rows_fn, identity)


def store_files(root: str) -> list[str]:
  return [os.path.join(d, f) for d, _, files in os.walk(root) for f in files]


def drop_page_cache(root: str) -> None:
  """Flushes every file under root and asks the kernel to drop its cached pages."""
  for path in store_files(root):
    fd = os.open(path, os.O_RDONLY)
    try:
      os.fsync(fd)
      os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
      os.close(fd)


def resident_fraction(root: str) -> float:
  """Share of the files' pages that are in the page cache (mincore)."""
  libc = ctypes.CDLL(None, use_errno=True)
  page = mmap.PAGESIZE
  resident = total = 0
  for path in store_files(root):
    size = os.path.getsize(path)
    if size == 0:
      continue
    with open(path, "rb") as f, mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY) as m:
      pages = -(-size // page)
      vec = (ctypes.c_ubyte * pages)()
      addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
      if libc.mincore(ctypes.c_void_p(addr), ctypes.c_size_t(size), vec) != 0:
        return float("nan")
      resident += sum(v & 1 for v in vec)
      total += pages
      del vec
  return resident / max(total, 1)


def histories(rng, id_of_rank, count: int, max_n: int) -> np.ndarray:
  """[count, K] windows of a fresh Zipfian stream (the newest token last)."""
  stream = zipf_stream(rng, count + max_n, id_of_rank, 1.1)
  return np.lib.stride_tricks.sliding_window_view(stream, max_n)[:count].astype(np.int64)


# -- the benchmark -----------------------------------------------------------------------------

def _measure(store, features, rng, id_of_rank, max_n: int, queries: int) -> dict:
  """{batch: (fetch ms/token, match+fetch ms/token)}, medians over the queries."""
  num_rows = store.layout.num_rows
  out = {}
  for b in BATCHES:
    ids = [np.unique(rng.integers(0, num_rows, b)) for _ in range(queries)]   # ~b distinct rows
    hist = histories(rng, id_of_rank, b * queries, max_n).reshape(queries, b, max_n)
    store.fetch(ids[0]).result()   # first call pays one-time setup
    fetch, both = [], []
    for q, h in zip(ids, hist):
      t0 = time.perf_counter()
      store.fetch(q).result()
      t1 = time.perf_counter()
      features.step(h).result()
      t2 = time.perf_counter()
      fetch.append(t1 - t0)
      both.append(t2 - t1)
    out[b] = (np.median(fetch) * 1e3 / b, np.median(both) * 1e3 / b)
  return out


def run(args) -> int:
  from scone_jax.methods.scone import FgramDecodeFeatures, StoreRows, matcher_from_tokens
  from scone_jax.serve.store import open_store
  if args.rows < 1000 or args.dim < 1 or args.queries < 1:
    raise UserError("need --rows >= 1000, --dim >= 1 and --queries >= 1")
  rng = np.random.default_rng(args.seed)
  root = tempfile.mkdtemp(prefix="scone_bench_lookup_", dir=args.dir)
  url = os.path.join(root, "store")
  try:
    t0 = time.perf_counter()
    vocab, id_of_rank = synthetic_vocab(rng, args.rows, args.max_n, args.vocab_size)
    write_synthetic_store(url, vocab, args.dim, args.dtype, rng)
    size_gib = sum(os.path.getsize(p) for p in store_files(url)) / 2**30
    ram = open_store(url, "ram", verify=False)
    lay = ram.layout
    print(f"bench lookup: S={lay.num_rows:,} rows x d={lay.dim} {lay.dtype} ({size_gib:.2f} GiB on disk, shards of "
          f"{lay.rows_per_shard} rows, inner chunks of {lay.inner_rows}), K={lay.max_n}; store built in "
          f"{time.perf_counter() - t0:.0f} s; {args.queries} queries per point", flush=True)
    matcher = matcher_from_tokens(ram.fgram_tokens)
    results = {"ram": _measure(ram, FgramDecodeFeatures(matcher, StoreRows(ram)), rng, id_of_rank, lay.max_n, args.queries)}
    del ram
    disk = open_store(url, "disk", verify=False, cache_bytes=args.cache_mb << 20)
    for block in range(lay.num_blocks):   # shard indices into tensorstore's cache
      disk.fetch(np.array([block * lay.rows_per_shard])).result()
    drop_page_cache(url)
    cold = resident_fraction(url)
    print(f"bench lookup: disk tier: page cache dropped ({cold:.1%} of the store resident), tensorstore "
          f"cache {args.cache_mb} MiB", flush=True)
    results["disk"] = _measure(disk, FgramDecodeFeatures(matcher, StoreRows(disk)), rng, id_of_rank, lay.max_n, args.queries)
    for tier in ("ram", "disk"):
      for b in BATCHES:
        fetch, both = results[tier][b]
        print(f"bench lookup: {tier:>4} batch {b:>2}: fetch {fetch:.4f} ms/token, match+fetch {both:.4f} ms/token")
    ram16, disk16 = results["ram"][GOAL_BATCH], results["disk"][GOAL_BATCH]
    ok = max(ram16) <= GOAL_RAM_MS and max(disk16) <= GOAL_DISK_MS
    print(f"bench lookup: batch {GOAL_BATCH}: ram {ram16[1]:.4f} ms/token with matching, {ram16[0]:.4f} fetch only "
          f"(goal <= {GOAL_RAM_MS}); disk {disk16[1]:.4f} with matching, {disk16[0]:.4f} fetch only "
          f"(goal <= {GOAL_DISK_MS}): {'PASS' if ok else 'FAIL'} ({PAPER})")
    _plot(results, args.plot, lay)
    print(f"bench lookup: plot written to {args.plot}")
  finally:
    if args.keep:
      print(f"bench lookup: store kept at {url}")
    else:
      shutil.rmtree(root, ignore_errors=True)
  return 0


def _plot(results: dict, path: str, lay) -> None:
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(6, 4))
  for tier, color in (("ram", "tab:blue"), ("disk", "tab:orange")):
    ax.plot(BATCHES, [results[tier][b][1] for b in BATCHES], "o-", color=color, label=f"{tier}: match+fetch")
    ax.plot(BATCHES, [results[tier][b][0] for b in BATCHES], "s--", color=color, alpha=0.6, label=f"{tier}: fetch")
  ax.set_xscale("log", base=2)
  ax.set_yscale("log")
  ax.set_xticks(BATCHES, [str(b) for b in BATCHES])
  ax.set_xlabel("batch size (tokens per query)")
  ax.set_ylabel("latency per token (ms)")
  ax.set_title(f"f-gram lookup, {lay.num_rows:,} x {lay.dim} {lay.dtype}")
  ax.grid(True, which="both", alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
