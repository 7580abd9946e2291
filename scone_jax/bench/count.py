"""`scone-jax bench count`: f-gram counting throughput, ours vs a plain sort-and-count.

Both count every n-gram for n = 2..K on the same corpus in one run, side by side:
- ours: scone_jax.fgram.count (chunked, spilled, apriori-pruned K-1 passes);
- plain: every n-gram of every length, no pruning, one `np.unique(keys, return_counts=True)` per
  n over the whole corpus in memory (keys = id of the (n-1)-prefix among all distinct
  (n-1)-grams * |V| + last token, the same exact key scheme without the pruning).
The corpus is synthetic Zipfian token ids (fixed seed, lognormal document lengths), or the train
split of a prepared DATA repeated up to --tokens. numpy sorts on one core, so tokens/s per core is
tokens / seconds for both. The two must produce identical f-grams for the top S.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from scone_jax.data.shards import load_meta, read_documents
from scone_jax.errors import UserError
from scone_jax.fgram.count import DEFAULT_CHUNK_TOKENS, count_fgrams, counted_meta, decode_keys
from scone_jax.fgram.vocab import FgramVocab


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--tokens", type=int, default=50_000_000, help="corpus size in tokens (default 50M)")
  parser.add_argument("--data", default=None, help="prepared DATA to repeat instead of the synthetic corpus")
  parser.add_argument("--vocab_size", type=int, default=32_000, help="synthetic vocabulary size")
  parser.add_argument("--zipf_exponent", type=float, default=1.0, help="synthetic token-frequency exponent")
  parser.add_argument("--max_n", type=int, default=5, help="K")
  parser.add_argument("--size", type=int, default=1_000_000, help="S")
  parser.add_argument("--min_count", type=int, default=5, help="c_min")
  parser.add_argument("--chunk_tokens", type=int, default=DEFAULT_CHUNK_TOKENS, help="tokens per chunk (ours)")
  parser.add_argument("--tmp_dir", default=None, help="where ours spills (default: the system temp dir)")
  parser.add_argument("--seed", type=int, default=0)


def synthetic_documents(num_tokens: int, vocab_size: int, exponent: float, seed: int,
                        num_special: int = 4) -> list[np.ndarray]:
  """Zipf-Mandelbrot token ids (ids < num_special are never drawn: they are the special ids),
  shuffled so frequency does not follow id order, cut into lognormal-length documents
  (median about 400 tokens)."""
  rng = np.random.default_rng(seed)
  ranks = np.arange(1, vocab_size - num_special + 1, dtype=np.float64)
  cdf = np.cumsum(1.0 / (ranks + 2.7) ** exponent)
  cdf /= cdf[-1]
  rank_to_id = rng.permutation(vocab_size - num_special).astype(np.int32) + num_special
  tokens = rank_to_id[np.searchsorted(cdf, rng.random(num_tokens), side="right").clip(max=len(cdf) - 1)]
  lengths = np.clip(rng.lognormal(np.log(400), 1.0, num_tokens // 16 + 1), 8, 16_384).astype(np.int64)
  ends = np.cumsum(lengths)
  ends = ends[ends < num_tokens]
  return np.split(tokens, ends)


def repeated_documents(data_dir: str, num_tokens: int) -> tuple[list[np.ndarray], int, tuple[int, ...]]:
  meta = load_meta(data_dir)
  base = [d for d in read_documents(data_dir, "train") if len(d)]
  if not base:
    raise UserError(f"{data_dir!r} has no train tokens to repeat")
  docs, total = [], 0
  while total < num_tokens:
    for d in base:
      docs.append(d)
      total += len(d)
      if total >= num_tokens:
        break
  return docs, meta.vocab_size, meta.special_ids


def plain_count(documents: list[np.ndarray], vocab_size: int, special_ids, max_n: int, size: int,
                min_count: int) -> FgramVocab:
  """The baseline: np.unique over every n-gram of every length, whole corpus in memory."""
  pieces = []
  for doc in documents:
    pieces.append(np.asarray(doc, dtype=np.int64))
    pieces.append(np.array([-1], dtype=np.int64))
  tokens = np.concatenate(pieces)
  if len(special_ids):
    tokens[np.isin(tokens, np.asarray(special_ids))] = -1
  ids = tokens.copy()  # id of each position's (n-1)-gram among all distinct ones; -1 = none
  distinct: dict[int, np.ndarray] = {}
  tops = []
  v = np.uint64(vocab_size)
  for n in range(2, max_n + 1):
    positions = np.flatnonzero((ids[:-1] >= 0) & (ids[1:] >= 0))  # n-gram exists (no separator)
    keys = ids[positions].astype(np.uint64) * v + tokens[positions + n - 1].astype(np.uint64)
    if n < max_n:
      unique, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
      ids = np.full(len(tokens), -1, dtype=np.int64)
      ids[positions] = inverse
    else:
      unique, counts = np.unique(keys, return_counts=True)
    distinct[n] = unique
    keep = np.flatnonzero(counts >= min_count)
    tops.append((n, unique[keep], counts[keep]))
  lengths = np.concatenate([np.full(len(k), n) for n, k, _ in tops])
  keys = np.concatenate([k for _, k, _ in tops])
  counts = np.concatenate([c for _, _, c in tops])
  order = np.lexsort((keys, lengths, -counts))[:size]
  fgrams: list[tuple[int, ...]] = [()] * len(order)
  for n in np.unique(lengths[order]):
    rows = np.flatnonzero(lengths[order] == n)
    decoded = decode_keys(keys[order][rows], int(n), distinct, vocab_size)
    for row, toks in zip(rows, decoded.tolist()):
      fgrams[row] = tuple(toks)
  meta = counted_meta(max_n=max_n, size=size, min_count=min_count, vocab_size=vocab_size,
                      tokens_counted=int(sum(len(d) for d in documents)), num_fgrams=len(fgrams))
  return FgramVocab.from_tuples(fgrams, counts[order], meta)


def run(args: argparse.Namespace) -> int:
  if args.tokens < 1000:
    raise UserError(f"--tokens {args.tokens} is too small to measure: pass 1000 or more")
  if args.data:
    documents, vocab_size, special_ids = repeated_documents(args.data, args.tokens)
    source = f"{args.data} repeated"
  else:
    if args.vocab_size < 8:
      raise UserError(f"--vocab_size {args.vocab_size} is too small: pass 8 or more")
    documents = synthetic_documents(args.tokens, args.vocab_size, args.zipf_exponent, args.seed)
    vocab_size, special_ids, source = args.vocab_size, (0, 1, 2, 3), f"synthetic Zipf({args.zipf_exponent})"
  num_tokens = sum(len(d) for d in documents)
  print(f"bench count: corpus {source}: {num_tokens:,} tokens in {len(documents):,} documents, |V|={vocab_size}, "
        f"K={args.max_n}, S={args.size}, c_min={args.min_count}", flush=True)

  start = time.perf_counter()
  ours = count_fgrams(documents, vocab_size=vocab_size, special_ids=special_ids, max_n=args.max_n,
                      size=args.size, min_count=args.min_count, chunk_tokens=args.chunk_tokens,
                      tmp_dir=args.tmp_dir)
  ours_s = time.perf_counter() - start
  start = time.perf_counter()
  plain = plain_count(documents, vocab_size, special_ids, args.max_n, args.size, args.min_count)
  plain_s = time.perf_counter() - start

  same = (np.array_equal(ours.flat, plain.flat) and np.array_equal(ours.offsets, plain.offsets)
          and np.array_equal(ours.counts, plain.counts))
  ours_rate, plain_rate = num_tokens / ours_s / 1e6, num_tokens / plain_s / 1e6
  print(f"bench count: ours {ours_s:.1f} s, np.unique {plain_s:.1f} s, {len(ours):,} f-grams "
        f"(lowest count {int(ours.counts[-1]) if len(ours) else 0}), top S identical: {same}")
  print(f"bench count: ours {ours_rate:.2f} Mtok/s/core, np.unique {plain_rate:.2f} Mtok/s/core, "
        f"ratio {ours_rate / plain_rate:.2f} (numpy sorts on 1 core of {os.cpu_count()})")
  if not same:
    print("bench count: MISMATCH between ours and np.unique")
    return 1
  return 0
