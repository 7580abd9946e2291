"""`scone-jax bench match`: exact matcher throughput against a dict-of-tuples matcher.

For each S in --sizes: a synthetic V_f (the top S n-grams, 2 <= n <= K, of a Zipfian token stream
over |V| tokens, ranked as docs/METHODS.md 1.1 ranks them, so it is closed under sub-n-grams), then a
fresh Zipfian stream of packed documents is matched by ExactMatcher (all of it) and by a plain
Python dict matcher (a slice of it), side by side in one run, single-threaded. The two must agree
on the slice; the lines report positions per second per core (positions / process CPU seconds,
so other load on the host does not count against either) and the ratio.
"""
from __future__ import annotations

import os

# The matcher's numpy ops are single-threaded; pin BLAS pools anyway so "per core" holds.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
  os.environ.setdefault(_var, "1")

import argparse
import time

import numpy as np

from scone_jax.errors import UserError
from scone_jax.fgram.matcher import MAX_LOAD, ExactMatcher
from scone_jax.progress import progress_bar

EXACT_REPEATS = 3  # the exact pass is short: the mean of a few runs steadies it


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--sizes", default="1000000,10000000",
                      help="comma-separated f-gram counts S to build (default 1M and 10M)")
  parser.add_argument("--max_n", type=int, default=5, help="K, the longest f-gram")
  parser.add_argument("--vocab_size", type=int, default=32768, help="|V| of the synthetic tokens")
  parser.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent of the token stream")
  parser.add_argument("--positions", type=int, default=2_000_000, help="positions matched by ExactMatcher")
  parser.add_argument("--dict_positions", type=int, default=200_000,
                      help="positions matched by the dict matcher (a prefix of the same stream)")
  parser.add_argument("--seq_len", type=int, default=2048, help="packed row length")
  parser.add_argument("--max_load", type=float, default=MAX_LOAD, help="ExactMatcher table load, at most")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--progress", action="store_true", help="show progress even when stderr is not a TTY")


def zipf_stream(rng: np.random.Generator, count: int, id_of_rank: np.ndarray, exponent: float) -> np.ndarray:
  """int32 [count] i.i.d. tokens: P(id_of_rank[k]) ~ (k+1)^-exponent."""
  weights = 1.0 / np.arange(1, len(id_of_rank) + 1) ** exponent
  cdf = np.cumsum(weights / weights.sum())
  ranks = np.minimum(np.searchsorted(cdf, rng.random(count)), len(id_of_rank) - 1)
  return id_of_rank[ranks]


def top_fgrams(stream: np.ndarray, size: int, max_n: int) -> tuple[np.ndarray, np.ndarray]:
  """The first `size` n-grams (2..max_n) of `stream` by (count desc, n asc, ids asc).
  Returns (flat int32, offsets int64 [S+1]) in rank order. Each n-gram is keyed by
  (first token, rank of its (n-1)-suffix among distinct (n-1)-grams), which sorts lexicographically."""
  ref = stream.astype(np.int64)  # per start position: the id of the n-gram starting there
  counts, lengths, order_in_n, first_pos = [], [], [], []
  for n in range(2, max_n + 1):
    keys = (stream[: len(stream) - n + 1].astype(np.int64) << 32) | ref[1: len(stream) - n + 2]
    unique, first, inverse, count = np.unique(keys, return_index=True, return_inverse=True, return_counts=True)
    ref = inverse.astype(np.int64)
    counts.append(count)
    lengths.append(np.full(unique.size, n, dtype=np.int64))
    order_in_n.append(np.arange(unique.size))
    first_pos.append(first)
  count, length = np.concatenate(counts), np.concatenate(lengths)
  order_in_n, first_pos = np.concatenate(order_in_n), np.concatenate(first_pos)
  chosen = np.lexsort((order_in_n, length, -count))[:size]
  length, first_pos = length[chosen], first_pos[chosen]
  offsets = np.zeros(len(chosen) + 1, dtype=np.int64)
  np.cumsum(length, out=offsets[1:])
  within = np.arange(offsets[-1]) - np.repeat(offsets[:-1], length)
  flat = stream[np.repeat(first_pos, length) + within].astype(np.int32)
  return flat, offsets


def packed_segments(rng: np.random.Generator, rows: int, seq_len: int, mean_doc: int) -> np.ndarray:
  """int32 [rows, seq_len] segment ids 1, 2, ... of documents with geometric lengths."""
  starts = rng.random((rows, seq_len)) < 1.0 / mean_doc
  starts[:, 0] = True
  return np.cumsum(starts, axis=1, dtype=np.int32)


class DictMatcher:
  """The reference: a dict tuple -> id; per position, grow from length 2 while the n-gram is in it."""

  def __init__(self, flat: np.ndarray, offsets: np.ndarray, max_n: int):
    small = list(range(int(flat.max()) + 1 if flat.size else 0))  # share one int object per id
    ids = [small[t] for t in flat.tolist()]
    bounds = offsets.tolist()
    self.table = {tuple(ids[bounds[r]:bounds[r + 1]]): r for r in range(len(bounds) - 1)}
    self.max_n = max_n

  def match_row(self, tokens: list[int], segments: list[int]) -> tuple[list[int], list[int]]:
    table, max_n = self.table, self.max_n
    fgram_id, match_len = [-1] * len(tokens), [1] * len(tokens)
    run = 0
    for i, seg in enumerate(segments):
      run = run + 1 if i and seg == segments[i - 1] else 1
      for n in range(2, min(run, max_n) + 1):
        r = table.get(tuple(tokens[i - n + 1: i + 1]))
        if r is None:
          break
        fgram_id[i], match_len[i] = r, n
    return fgram_id, match_len


def run(args: argparse.Namespace) -> int:
  try:
    sizes = [int(s) for s in str(args.sizes).split(",") if s.strip()]
  except ValueError:
    raise UserError(f"--sizes {args.sizes!r} is not a comma-separated list of integers") from None
  if not sizes or min(sizes) < 1:
    raise UserError(f"--sizes {args.sizes!r} must name at least one positive S")
  if args.max_n < 2 or args.positions < args.seq_len or args.dict_positions < 1:
    raise UserError("need --max_n >= 2, --positions >= --seq_len and --dict_positions >= 1")
  rng = np.random.default_rng(args.seed)
  rows = args.positions // args.seq_len
  id_of_rank = rng.permutation(args.vocab_size).astype(np.int32)  # one token distribution for all streams
  tokens = zipf_stream(rng, rows * args.seq_len, id_of_rank, args.zipf).reshape(rows, args.seq_len)
  segments = packed_segments(rng, rows, args.seq_len, mean_doc=512)
  dict_rows = max(1, min(rows, -(-args.dict_positions // args.seq_len)))
  for size in sizes:
    with progress_bar(f"S={size}: counting n-grams", enabled=args.progress or None, transient=True) as stage:
      # About three distinct n-grams per stream token: size the stream so S is reachable.
      corpus = zipf_stream(rng, max(4 * size // 3, 10_000), id_of_rank, args.zipf)
      flat, offsets = top_fgrams(corpus, size, args.max_n)
      del corpus
      stage.describe(f"S={size}: building the exact table")
      t0 = time.perf_counter()
      matcher = ExactMatcher.from_arrays(flat, offsets, args.max_n, max_load=args.max_load)
      build_s = time.perf_counter() - t0  # wall clock: what a user waits
      stage.describe(f"S={size}: matching")
      matcher.match(tokens[:1], segments[:1])  # warm the table into cache once
      t0 = time.process_time()
      for _ in range(EXACT_REPEATS):
        fgram_id, match_len = matcher.match(tokens, segments)
      exact_s = (time.process_time() - t0) / EXACT_REPEATS
      stage.describe(f"S={size}: building the dict")
      reference = DictMatcher(flat, offsets, args.max_n)
      stage.describe(f"S={size}: dict matching")
      dict_tokens, dict_segments = tokens[:dict_rows].tolist(), segments[:dict_rows].tolist()
      t0 = time.process_time()
      expected = [reference.match_row(t, s) for t, s in zip(dict_tokens, dict_segments)]
      dict_s = time.process_time() - t0
      del reference
    want_id = np.array([e[0] for e in expected], dtype=np.int32)
    want_len = np.array([e[1] for e in expected], dtype=np.int32)
    if not (np.array_equal(want_id, fgram_id[:dict_rows]) and np.array_equal(want_len, match_len[:dict_rows])):
      raise RuntimeError(f"S={size}: ExactMatcher disagrees with the dict matcher")
    exact_rate = tokens.size / exact_s / 1e6
    dict_rate = dict_rows * args.seq_len / dict_s / 1e6
    hist = np.bincount(match_len.reshape(-1), minlength=args.max_n + 1)[1:] / match_len.size
    table_mb = matcher.nbytes / 2**20
    print(f"bench match: S={len(offsets) - 1} exact {exact_rate:.2f} Mpos/s/core, "
          f"dict {dict_rate:.3f} Mpos/s/core, ratio {exact_rate / dict_rate:.1f}")
    print(f"bench match:   S={len(offsets) - 1} table build {build_s:.2f} s, table {table_mb:.0f} MiB, "
          f"max probe {matcher.max_probe}, exact on {tokens.size} positions, dict on "
          f"{dict_rows * args.seq_len}, match length share 1..{args.max_n}: "
          + " ".join(f"{h:.3f}" for h in hist), flush=True)
  return 0
