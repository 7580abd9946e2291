"""Corpus-scale f-gram counting as an Apache Beam pipeline (same result as scone_jax.fgram.count).

Distributed and numpy-batched: no element is ever one n-gram, no side input grows with the
survivors, no step gathers the vocabulary on one worker.

n-grams as data. A set of n-grams travels as a few arrays: hashes uint64 [m], tokens int32 [m, n]
and counts int64 [m]. The hash (FNV-1a over the ids, fold_hashes) only places an n-gram: its
bucket is mix(hash) % B, the same in every pass and on every worker. Every equality is decided on
the tokens themselves (group_exact sorts by hash and compares the token rows; a collision takes an
exact lexicographic path), so a hash collision can never change a count or the output.

The graph, for K = max_n, B buckets, over the ArrayRecord train shards:
  pass n = 2..K:
    CountShard(n)  per shard: re-read it, mark the positions whose (n-1)-gram is one of the
                   shard's survivors of pass n-1; candidates are positions whose (n-1)-prefix and
                   (n-1)-suffix both survived; count them and emit one (bucket, arrays) element
                   per bucket. Windows whose ids fit 64 bits side by side are exact packed keys
                   (membership: member_keys, a numpy hash table; counting: one plain sort, as
                   the local counter's last pass); longer ones use the hashes, verified id by id
                   (group_rows, on count.sort_and_count: the local counter's kernel).
    MergeBucket(n) GroupByKey(bucket): sum the shards' counts exactly; survivors = count >= c_min.
                   The join: every shard's candidates meet their bucket's totals here, and each
                   shard gets back, keyed by shard id, exactly its own n-grams that survived.
    GroupByKey(shard id) -> the input of CountShard(n + 1) (a shard's survivors, never anyone's).
  ranking (docs/METHODS.md 1.1: count desc, n asc, ids asc; top S), per part = (n, bucket):
    Histogram      a small combine of (count, n) -> number of survivors (one message per part);
                   its cumulative sum gives every (count, n) group's first rank. The cutoff is
                   the last group that starts below S: groups before it are kept whole, its own
                   ties are cut exactly by rank below. Each part gets that one integer.
    Select         each part keeps its members of the kept groups, sorted by (group, tokens).
    Splitters      every `sample_every`-th member of each part (RANGE_ROWS by default); per n
                   they cut the (group, tokens) order into ranges of about sample_every members.
    Route          each part sends its members to their ranges (n, r), one message per range, and
                   one message with its (range, group) sizes; a small combine turns those into
                   the global rank of each group's first member in each range.
    RankRange      a range sorts its members and knows their exact global ranks (>= S dropped).
    WriteFile      GroupByKey(file k = rank // rows_per_file) writes fgrams file k (vocab.write_rows,
                   vocab.file_names: the local runner's layout and bytes); then one summary.json.
Only Create, ParDo, Flatten and GroupByKey: every join is a GroupByKey of tagged values (no side
inputs, which the Dask runner evaluates wrongly, and no side input grows with the survivors);
the messages that reach one worker (histogram, range sizes) are bounded by the number of
distinct counts and of ranges, not by the survivors. Everything ends in one leaf, WriteSummary
(the Dask runner computes only the last transform).

Runners. Pipeline options come as one string (--beam_args, parse_beam_args); the default is the
FnApiRunner with worker processes (offline: it never downloads a runner binary). DaskRunner may
be named by its short name; without --dask_npartitions it gets one partition per worker thread
(the runner's own default puts 128 created elements, here all shards, in one task). Beam 2.77's
DaskRunner turns Flatten into a concatenation of partitions, so the joins multiply the tasks
(about 150K at 10 shards): correct, but slow; it is a test engine, Dataflow/Flink/Spark the
production ones. On a remote runner the shard paths must be readable by the workers and
--temp_location must be a shared location: the ranked files are written there and copied into FG.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import tempfile
import uuid

import numpy as np

from scone_jax.data import shards
from scone_jax.errors import UserError
from scone_jax.fgram import vocab as vocab_lib
from scone_jax.fgram.count import (
  SEPARATOR,
  check_vocab_size,
  counted_meta,
  document_tokens,
  mask_specials,
  sort_and_count,
  validate_params,
)
from scone_jax.fgram.vocab import FgramVocab
from scone_jax.files import atomic_directory

DEFAULT_BEAM_ARGS = ["--runner=FnApiRunner", "--direct_running_mode=multi_processing",
                     f"--direct_num_workers={max(1, min(8, os.cpu_count() or 1))}"]
RUNNER_ALIASES = {"DaskRunner": "apache_beam.runners.dask.dask_runner.DaskRunner"}
BEAM_ARGS_HELP = ("Beam pipeline options as one string, e.g. '--runner=DaskRunner --dask_client_address=HOST:PORT' "
                  f"(default: {' '.join(DEFAULT_BEAM_ARGS)})")
SUMMARY = "summary.json"
MEMORY_TRACE_ENV = "SCONE_BEAM_MEMORY_TRACE"  # a directory: the workers log each step call's peak heap there
RANGE_ROWS = 1 << 20  # members per sorting range, about (the sampling rate of the splitters)
GROUP_BASE = 1 << 56  # counts stay below it (a count is at most the tokens counted)
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


# ---- pipeline options: the one --beam_args flag (shared by every Beam command) ------------------

def add_beam_args(parser) -> None:
  """Adds --beam_args to an argparse parser (fgrams build, fgrams tag)."""
  parser.add_argument("--beam_args", default="", help=BEAM_ARGS_HELP)


def parse_beam_args(text: str | list[str] | tuple[str, ...] | None) -> list[str]:
  """--beam_args as Beam's argv: shell-split, DEFAULT_BEAM_ARGS when no --runner is named, and
  short runner names Beam does not know (DaskRunner) as their full class path."""
  if isinstance(text, str) or text is None:
    try:
      args = shlex.split(text or "")
    except ValueError as e:
      raise UserError(f"--beam_args {text!r} cannot be split like a shell line ({e})") from e
  else:
    args = list(text)
  out, named = [], False
  for i, a in enumerate(args):
    if a == "--runner" or a.startswith("--runner="):
      named = True
      if a.startswith("--runner="):
        name = a.split("=", 1)[1]
        a = "--runner=" + RUNNER_ALIASES.get(name, name)
    elif i > 0 and args[i - 1] == "--runner":
      a = RUNNER_ALIASES.get(a, a)
    out.append(a)
  return out if named else DEFAULT_BEAM_ARGS + out


def _run(pipeline_result) -> None:
  state = pipeline_result.wait_until_finish()
  client = getattr(pipeline_result, "client", None)  # DaskRunner: close our client before the cluster goes
  if client is not None:
    client.close()
  if state is not None and str(state).upper().endswith("FAILED"):
    raise RuntimeError(f"the Beam pipeline ended in state {state}")


# ---- numpy kernels -------------------------------------------------------------------------------

def _fnv(h, col):
  h = np.full(len(col), _FNV_OFFSET, np.uint64) if h is None else h
  h ^= col
  h *= _FNV_PRIME
  return h


def fold_hashes(columns) -> np.ndarray:
  """FNV-1a-style uint64 hash of rows given as an iterable of int columns (the ids of position j)."""
  h = None
  for col in columns:
    h = _fnv(h, np.asarray(col).astype(np.uint64))
  return h


def tuple_hashes(tokens: np.ndarray) -> np.ndarray:
  return fold_hashes(tokens[:, j] for j in range(tokens.shape[1]))


def buckets_of(hashes: np.ndarray, num_buckets: int) -> np.ndarray:
  """Bucket of each hash (splitmix64 finalizer, then modulo): the same in every pass and worker."""
  x = hashes.copy()
  x ^= x >> np.uint64(30)
  x *= np.uint64(0xBF58476D1CE4E5B9)
  x ^= x >> np.uint64(27)
  x *= np.uint64(0x94D049BB133111EB)
  x ^= x >> np.uint64(31)
  return (x % np.uint64(num_buckets)).astype(np.int64)


def _sum_by(inverse: np.ndarray, counts: np.ndarray, size: int) -> np.ndarray:
  """Exact int64 sums of counts per inverse index."""
  if int(counts.sum()) < 2**53:
    return np.rint(np.bincount(inverse, weights=counts, minlength=size)).astype(np.int64)
  out = np.zeros(size, np.int64)
  np.add.at(out, inverse, counts)
  return out


def group_rows(hashes: np.ndarray, column, n: int, counts: np.ndarray | None = None):
  """Groups N rows of n ids exactly. column(j) gives the ids at place j of every row; hashes
  are the rows' tuple hashes. Returns (first row of each group [U], summed counts [U] int64
  (counts None = 1 per row), inverse [N]).

  The local counter's sort_and_count does the work: the key is the hash's top 64 - p bits with
  the row index packed in the low p bits (one plain sort). Rows of one key are then compared id
  by id with the key's first row; only keys that hold different rows (hash or truncation
  collisions, rare) are split exactly by a lexicographic sort of their rows."""
  if len(hashes) == 0:
    return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64)
  position_bits = max(1, (len(hashes) - 1).bit_length())
  keys = hashes >> np.uint64(position_bits)
  unique, run_counts, inverse = sort_and_count(keys, 64 - position_bits, want_inverse=True)
  first = np.empty(len(unique), np.int64)
  first[inverse[::-1]] = np.arange(len(hashes) - 1, -1, -1)
  same = np.ones(len(hashes), bool)
  for j in range(n):
    col = column(j)
    same &= col == col[first[inverse]]
  if same.all():
    return first, (run_counts if counts is None else _sum_by(inverse, counts, len(unique))), inverse
  bad = np.zeros(len(unique), bool)
  bad[inverse[~same]] = True
  rows = np.flatnonzero(bad[inverse])
  cols = [column(j)[rows] for j in range(n)]
  order = np.lexsort(cols[::-1] + [hashes[rows]])
  new = np.ones(len(rows), bool)
  new[1:] = hashes[rows][order][1:] != hashes[rows][order][:-1]
  for c in cols:
    new[1:] |= c[order][1:] != c[order][:-1]
  inverse = inverse.astype(np.int64)
  inverse[rows[order]] = len(unique) + np.cumsum(new) - 1
  used = np.bincount(inverse, minlength=len(unique) + int(new.sum())) > 0
  inverse = (np.cumsum(used) - 1)[inverse]
  size = int(used.sum())
  first = np.empty(size, np.int64)
  first[inverse[::-1]] = np.arange(len(hashes) - 1, -1, -1)
  ones = np.ones(len(hashes), np.int64) if counts is None else counts
  return first, _sum_by(inverse, ones, size), inverse


def group_exact(hashes: np.ndarray, tokens: np.ndarray, counts: np.ndarray | None = None):
  """Groups equal n-gram rows of tokens [N, n] exactly: (hashes [U], tokens [U, n], summed
  counts [U] int64, inverse [N])."""
  first, total, inverse = group_rows(hashes, lambda j: tokens[:, j], tokens.shape[1], counts)
  return hashes[first], tokens[first], total, inverse


def _windows(tokens: np.ndarray, starts: np.ndarray, n: int) -> np.ndarray:
  out = np.empty((len(starts), n), np.int32)
  for j in range(n):
    out[:, j] = tokens[starts + j]
  return out


def _members(hashes, starts, tokens, m, survivor_hashes, survivor_tokens) -> np.ndarray:
  """bool per window (tokens[starts : starts + m]): is it one of the survivors (sorted by hash)?"""
  found = np.zeros(len(starts), bool)
  if len(survivor_hashes) == 0 or len(starts) == 0:
    return found
  base = np.searchsorted(survivor_hashes, hashes)
  max_run = 1
  if len(survivor_hashes) > 1 and np.any(survivor_hashes[1:] == survivor_hashes[:-1]):
    _, run = np.unique(survivor_hashes, return_counts=True)
    max_run = int(run.max())
  for k in range(max_run):  # k > 0 only where different survivors share a hash
    idx = base + k
    todo = np.flatnonzero(~found & (idx < len(survivor_hashes)))
    todo = todo[survivor_hashes[idx[todo]] == hashes[todo]]
    ok = np.ones(len(todo), bool)
    for j in range(m):
      ok &= tokens[starts[todo] + j] == survivor_tokens[idx[todo], j]
    found[todo[ok]] = True
  return found


def read_shard(path: str):
  """Yields every record (one document, little-endian int32 ids) of one ArrayRecord shard."""
  return shards.read_records(path)


def shard_tokens(path: str, vocab_size: int, special_ids) -> np.ndarray:
  """One shard as the local counter's token stream: documents back to back, each followed by
  SEPARATOR, special ids masked to SEPARATOR."""
  pieces = [document_tokens(np.frombuffer(r, dtype="<i4"), i, vocab_size, path) for i, r in enumerate(read_shard(path))]
  if not pieces:
    return np.empty(0, np.int32)
  return mask_specials(np.concatenate(pieces), special_ids)


def _slide(tokens: np.ndarray, m: int, combine) -> np.ndarray:
  """combine folded over the m columns of every window start 0..L-m (contiguous slices, no gathers)."""
  count = len(tokens) - m + 1
  out = None
  for j in range(m):
    out = combine(out, tokens[j:j + count].astype(np.uint64))
  return out


def packed_keys(tokens: np.ndarray, m: int, bits: int) -> np.ndarray:
  """Exact uint64 key of every window of m ids (m * bits <= 64): the ids side by side, so key
  order is lexicographic order."""
  return _slide(tokens, m, lambda k, col: col if k is None else (k << np.uint64(bits)) | col)


def pack_rows(rows: np.ndarray, bits: int) -> np.ndarray:
  keys = np.zeros(len(rows), np.uint64)
  for j in range(rows.shape[1]):
    keys = (keys << np.uint64(bits)) | rows[:, j].astype(np.uint64)
  return keys


def unpack_keys(keys: np.ndarray, m: int, bits: int) -> np.ndarray:
  rows = np.empty((len(keys), m), np.int32)
  mask = np.uint64((1 << bits) - 1)
  for j in range(m):
    rows[:, j] = (keys >> np.uint64(bits * (m - 1 - j))) & mask
  return rows


def member_keys(known: np.ndarray, queries: np.ndarray) -> np.ndarray:
  """bool per query: is it one of the (distinct) uint64 keys `known`? A bucketed hash table
  (about 4 slots per key, multiplicative hashing): one gather per query, a few more for the
  queries whose bucket holds several keys; exact (keys are compared, not hashes)."""
  found = np.zeros(len(queries), bool)
  if len(known) == 0 or len(queries) == 0:
    return found
  k = max(4, (4 * len(known) - 1).bit_length())
  shift, mult = np.uint64(64 - k), np.uint64(0x9E3779B97F4A7C15)
  known_buckets = ((known * mult) >> shift).astype(np.int64)
  order = np.argsort(known_buckets, kind="stable")
  table = np.append(known[order], np.uint64(0))  # a sentinel past the end
  sizes = np.bincount(known_buckets, minlength=1 << k).astype(np.int32)
  starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int32 if len(known) < 2**31 else np.int64)
  query_buckets = queries * mult
  query_buckets >>= shift
  query_buckets = query_buckets.view(np.int64)  # < 2^k: the same values
  at = starts[query_buckets]
  found = table[at] == queries
  occupied = sizes[query_buckets]
  found &= occupied > 0
  more = np.flatnonzero(~found & (occupied > 1))  # buckets holding several keys: rare
  del occupied
  for step in range(1, int(sizes.max()) if len(more) else 1):
    more = more[sizes[query_buckets[more]] > step]
    hit = table[at[more] + step] == queries[more]
    found[more[hit]] = True
    more = more[~hit]
  return found


def id_bits(vocab_size: int) -> int:
  return max(1, (vocab_size - 1).bit_length())


def count_shard(tokens: np.ndarray, n: int, survivors=None, vocab_size: int | None = None):
  """The candidate n-grams of one shard and their counts in it: (hashes, tokens [U, n], counts).
  survivors: (hashes sorted, tokens [s, n-1]) of this shard's (n-1)-grams that survived pass n-1;
  None for n = 2. With vocab_size given, windows of m ids with m * bits(vocab) <= 64 use exact
  packed keys (a plain sort, as in the local counter), longer ones the verified hashes."""
  if len(tokens) < n:
    return np.empty(0, np.uint64), np.empty((0, n), np.int32), np.empty(0, np.int64)
  bits = id_bits(vocab_size) if vocab_size else 64
  bad = np.concatenate([[0], np.cumsum(tokens == SEPARATOR, dtype=np.int64)])

  def valid(m):  # bool per window start 0..L-m: no separator inside
    return bad[m:] - bad[:-m] == 0

  if n == 2:
    is_candidate = valid(2)
    del bad
  else:
    m = n - 1
    starts = np.flatnonzero(valid(m))
    del bad
    survivor_hashes, survivor_tokens = survivors
    alive = np.zeros(len(tokens) - m + 1, bool)
    if m * bits <= 64:
      queries = packed_keys(tokens, m, bits)[starts]
      alive[starts[member_keys(pack_rows(survivor_tokens, bits), queries)]] = True
      del queries
    else:
      hashes = _slide(tokens, m, _fnv)[starts]
      alive[starts[_members(hashes, starts, tokens, m, survivor_hashes, survivor_tokens)]] = True
      del hashes
    del starts
    is_candidate = alive[:-1] & alive[1:]
    del alive  # the (n-1)-prefix at i and the (n-1)-suffix at i + 1 survived
  if n * bits <= 64:
    keys = packed_keys(tokens, n, bits)[is_candidate]
    del is_candidate
    keys.sort()
    if len(keys) == 0:
      return np.empty(0, np.uint64), np.empty((0, n), np.int32), np.empty(0, np.int64)
    heads = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
    counts = np.diff(np.append(heads, len(keys))).astype(np.int64)
    grams = unpack_keys(keys[heads], n, bits)
    return tuple_hashes(grams), grams, counts
  candidates = np.flatnonzero(is_candidate)
  hashes = _slide(tokens, n, _fnv)[candidates]
  first, counts, _ = group_rows(hashes, lambda j: tokens[candidates + j], n)
  return hashes[first], _windows(tokens, candidates[first], n), counts


def lex_keys(tokens: np.ndarray, prefix: np.ndarray | None = None) -> np.ndarray:
  """Fixed-width byte strings whose order is the lexicographic order of the rows (ids >= 0 as
  big-endian uint32), optionally after a big-endian int64 prefix (non-negative)."""
  parts = [] if prefix is None else [np.asarray(prefix, dtype=">i8").reshape(-1, 1).view(np.uint8)]
  parts.append(np.ascontiguousarray(tokens, dtype=">u4").view(np.uint8).reshape(len(tokens), -1))
  raw = np.ascontiguousarray(np.concatenate(parts, axis=1))
  return raw.view(f"S{raw.shape[1]}").reshape(-1)


# ---- pipeline steps ------------------------------------------------------------------------------

class _Config:
  def __init__(self, paths, vocab_size, special_ids, max_n, size, min_count, num_buckets, sample_every,
               rows_per_file, result_dir):
    self.paths, self.vocab_size, self.special_ids = list(paths), vocab_size, tuple(sorted(special_ids))
    self.max_n, self.size, self.min_count, self.num_buckets = max_n, size, min_count, num_buckets
    self.sample_every, self.rows_per_file, self.result_dir = sample_every, rows_per_file, result_dir


def _count_step(cfg: _Config, n: int):
  def step(element):
    if n == 2:
      shard, survivors = element, None
    else:
      shard, pieces = element
      hashes = np.concatenate([p[0] for p in pieces])
      order = np.argsort(hashes, kind="stable")
      survivors = (hashes[order], np.concatenate([p[1] for p in pieces])[order])
    tokens = shard_tokens(cfg.paths[shard], cfg.vocab_size, cfg.special_ids)
    hashes, grams, counts = count_shard(tokens, n, survivors, cfg.vocab_size)
    if len(hashes) == 0:
      return
    buckets = buckets_of(hashes, cfg.num_buckets)
    order = np.argsort(buckets, kind="stable")
    bounds = np.flatnonzero(np.diff(buckets[order])) + 1
    for sel in np.split(order, bounds):
      yield int(buckets[sel[0]]), (shard, hashes[sel], grams[sel], counts[sel])
  return step


def _merge_step(cfg: _Config, n: int):
  def step(element):
    bucket, pieces = element
    pieces = list(pieces)
    hashes = np.concatenate([p[1] for p in pieces])
    grams = np.concatenate([p[2] for p in pieces])
    unique, tokens, totals, inverse = group_exact(hashes, grams, np.concatenate([p[3] for p in pieces]))
    alive = totals >= cfg.min_count
    if alive.any():
      yield "rank", ((n, bucket), (tokens[alive], totals[alive]))
    if n < cfg.max_n:
      at = 0
      for shard, h, g, _ in pieces:
        keep = alive[inverse[at:at + len(h)]]
        at += len(h)
        if keep.any():
          yield "next", (shard, (h[keep], g[keep]))
  return step


def group_ids(counts: np.ndarray, n: int, max_n: int) -> np.ndarray:
  """int64 >= 0 per (count, n) whose ascending order is the rank order of the groups (count desc, n asc)."""
  return (GROUP_BASE - np.asarray(counts, dtype=np.int64)) * (max_n + 1) + n


def _tagged(items, kind):
  return [v for k, v in items if k == kind]


def _histogram(cfg: _Config):
  def step(part):
    (n, _), (_, counts) = part
    values, num = np.unique(counts, return_counts=True)
    return 0, (group_ids(values, n, cfg.max_n), num.astype(np.int64))
  return step


def _cutoff(cfg: _Config):
  """From the histogram: the groups that start below rank S, the last of them (members of later
  groups are not selected), and one message per consumer (broadcasts of a few integers)."""
  def step(element):
    _, pieces = element
    pieces = list(pieces)
    ids = np.concatenate([p[0] for p in pieces])
    nums = np.concatenate([p[1] for p in pieces])
    unique, inverse = np.unique(ids, return_inverse=True)
    sizes = np.zeros(len(unique), np.int64)
    np.add.at(sizes, inverse, nums)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    keep = starts < cfg.size
    last = int(unique[keep][-1])
    num_fgrams = int(min(cfg.size, sizes.sum()))
    for n in range(2, cfg.max_n + 1):
      for b in range(cfg.num_buckets):
        yield "part", ((n, b), ("last", last))
    yield "groups", (0, ("groups", (unique[keep], starts[keep])))
    for k in range(len(vocab_lib.file_names(num_fgrams, cfg.rows_per_file))):
      yield "file", (k, ("num_fgrams", num_fgrams))
    yield "summary", (0, ("num_fgrams", num_fgrams))
  return step


def _select(cfg: _Config):
  """Per part: its members in selected groups, sorted by (group, tokens), with their group id."""
  def step(element):
    (n, bucket), items = element
    data, last = _tagged(items, "data"), _tagged(items, "last")
    if not data or not last:
      return
    tokens, counts = data[0]
    g = group_ids(counts, n, cfg.max_n)
    keep = g <= last[0]
    if not keep.any():
      return
    g, tokens, counts = g[keep], tokens[keep], counts[keep]
    order = np.argsort(lex_keys(tokens, g), kind="stable")
    yield (n, bucket), (g[order], tokens[order], counts[order])
  return step


def _samples(cfg: _Config):
  """Every sample_every-th member of a part, in (group, tokens) order."""
  def step(part):
    (n, _), (g, tokens, _) = part
    pick = np.arange(cfg.sample_every - 1, len(g), cfg.sample_every)
    if len(pick):
      yield 0, (n, g[pick], tokens[pick])
  return step


def _splitters(cfg: _Config):
  """Per n: the sorted lex_keys(tokens, group) of the samples, sent to every part of length n."""
  def step(element):
    _, pieces = element
    by_n = {}
    for n, g, tokens in pieces:
      by_n.setdefault(n, []).append(lex_keys(tokens, g))
    for n, keys in by_n.items():
      keys = np.sort(np.concatenate(keys))
      for b in range(cfg.num_buckets):
        yield (n, b), ("splitters", keys)
  return step


def _runs(*columns) -> list[tuple[int, int]]:
  """(lo, hi) of the runs of equal rows across the given equal-length columns."""
  size = len(columns[0])
  change = np.zeros(max(0, size - 1), bool)
  for c in columns:
    change |= c[1:] != c[:-1]
  cut = np.flatnonzero(change) + 1
  return list(zip(np.concatenate([[0], cut]).tolist(), np.append(cut, size).tolist()))


def _route(element):
  """Per part of length n: its members cut by the splitters of length n into ranges (n, r), r =
  the number of splitters at or below the member in (group, tokens) order. One rows message per
  range it touches and one message with its (range, group) sizes."""
  (n, _), items = element
  parts, spl = _tagged(items, "data"), _tagged(items, "splitters")
  if not parts:
    return
  g, tokens, counts = parts[0]
  ranges = np.searchsorted(spl[0], lex_keys(tokens, g), side="right") if spl else np.zeros(len(g), np.int64)
  for lo, hi in _runs(ranges):
    yield "rows", ((n, int(ranges[lo])), ("rows", (g[lo:hi], tokens[lo:hi], counts[lo:hi])))
  runs = _runs(ranges, g)
  heads = np.array([lo for lo, _ in runs], np.int64)
  yield "size", (0, ("size", (n, ranges[heads], g[heads], np.array([hi - lo for lo, hi in runs], np.int64))))


def _range_starts(element):
  """Per range (n, r) and group g in it: the global rank of the group's first member there, its
  group's first rank plus the group's members in earlier ranges."""
  _, items = element
  ids, group_starts = _tagged(items, "groups")[0]
  sizes = _tagged(items, "size")
  if not sizes:
    return
  n = np.concatenate([np.full(len(p[1]), p[0], np.int64) for p in sizes])
  r, g, size = (np.concatenate([p[i] for p in sizes]).astype(np.int64) for i in (1, 2, 3))
  order = np.lexsort((r, g))  # by group, then range (a group has one n)
  n, r, g, size = n[order], r[order], g[order], size[order]
  runs = _runs(g, r)
  heads = np.array([lo for lo, _ in runs], np.int64)
  n, r, g = n[heads], r[heads], g[heads]
  size = np.add.reduceat(size, heads)
  before = np.cumsum(size) - size  # members of earlier (group, range) rows
  group_head = np.concatenate([[0], np.flatnonzero(g[1:] != g[:-1]) + 1])
  first_of_group = np.repeat(group_head, np.diff(np.append(group_head, len(g))))
  start = group_starts[np.searchsorted(ids, g)] + before - before[first_of_group]
  order = np.lexsort((g, r, n))
  n, r, g, start = n[order], r[order], g[order], start[order]
  for lo, hi in _runs(n, r):
    yield (int(n[lo]), int(r[lo])), ("start", (g[lo:hi], start[lo:hi]))


def _rank_range(cfg: _Config):
  """Sorts one range by (group, tokens), gives its members their global ranks, keeps ranks < S,
  splits them by file."""
  def step(element):
    _, items = element
    rows, starts = _tagged(items, "rows"), _tagged(items, "start")
    if not rows:
      return
    g = np.concatenate([p[0] for p in rows])
    tokens = np.concatenate([p[1] for p in rows])
    counts = np.concatenate([p[2] for p in rows])
    order = np.argsort(lex_keys(tokens, g), kind="stable")
    g, tokens, counts = g[order], tokens[order], counts[order]
    start_ids, start_ranks = starts[0]
    head = np.concatenate([[0], np.flatnonzero(g[1:] != g[:-1]) + 1])
    within = np.arange(len(g)) - np.repeat(head, np.diff(np.append(head, len(g))))
    ranks = start_ranks[np.searchsorted(start_ids, g)] + within
    keep = ranks < cfg.size
    tokens, counts, ranks = tokens[keep], counts[keep], ranks[keep]
    files = ranks // cfg.rows_per_file
    # ranks are contiguous within a group, not across: one piece per run of consecutive ranks and file
    cut = np.flatnonzero((np.diff(ranks) != 1) | (np.diff(files) != 0)) + 1
    for lo, hi in zip(np.concatenate([[0], cut]), np.append(cut, len(ranks))):
      if hi > lo:
        yield int(files[lo]), ("rows", (int(ranks[lo]), tokens[lo:hi], counts[lo:hi]))
  return step


def _write_file(cfg: _Config):
  def step(element):
    from apache_beam.io.filesystems import FileSystems
    k, items = element
    pieces = sorted(_tagged(items, "rows"), key=lambda p: p[0])
    num_fgrams = _tagged(items, "num_fgrams")[0]
    names = vocab_lib.file_names(num_fgrams, cfg.rows_per_file)
    lo = k * cfg.rows_per_file
    hi = min(num_fgrams, lo + cfg.rows_per_file)
    at = lo
    for first, _, counts in pieces:
      assert first == at, f"file {k}: ranks not contiguous ({first} after {at})"
      at += len(counts)
    assert at == hi, f"file {k}: {at - lo} rows, expected {hi - lo}"
    lengths = np.concatenate([np.full(len(p[2]), p[1].shape[1], np.int64) for p in pieces])
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.concatenate([p[1].reshape(-1) for p in pieces])
    with FileSystems.create(FileSystems.join(cfg.result_dir, names[k])) as f:
      vocab_lib.write_rows(f, flat, offsets, np.concatenate([p[2] for p in pieces]))
    return 0, ("file", names[k])
  return step


def _write_summary(cfg: _Config):
  def step(element):
    from apache_beam.io.filesystems import FileSystems
    _, items = element
    num = _tagged(items, "num_fgrams")
    summary = {"tokens_counted": int(sum(_tagged(items, "tokens"))), "num_fgrams": num[0] if num else 0,
               "files": sorted(_tagged(items, "file"))}
    with FileSystems.create(FileSystems.join(cfg.result_dir, SUMMARY)) as f:
      f.write(json.dumps(summary).encode())
  return step


def _shard_tokens_counted(cfg: _Config):
  def step(shard):
    return 0, ("tokens", sum(len(r) // 4 for r in read_shard(cfg.paths[shard])))
  return step


def _measured(label: str, fn):
  """fn, logging per call (when MEMORY_TRACE_ENV names a directory in the worker's environment)
  the peak of the heap it allocated (tracemalloc: Python objects and numpy arrays), a line
  "label bytes" in DIR/<pid>.txt. The pipeline's own working set, apart from the runner's buffers."""
  def call(*a):
    directory = os.environ.get(MEMORY_TRACE_ENV)
    if not directory:
      return fn(*a)
    import tracemalloc
    if not tracemalloc.is_tracing():
      tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    out = fn(*a)
    out = list(out) if out is not None and not isinstance(out, tuple) else out
    peak = tracemalloc.get_traced_memory()[1] - base
    with open(os.path.join(directory, f"{os.getpid()}.txt"), "a") as f:
      f.write(f"{label} {peak}\n")
    return out
  return call


def build_pipeline(pipeline, cfg: _Config) -> None:
  """Adds the counting graph to `pipeline`; running it writes the ranked files and SUMMARY to
  cfg.result_dir. Only Create, ParDo, Flatten and GroupByKey: every join is a GroupByKey of
  tagged values (no side inputs: runners such as Dask evaluate those poorly), and everything
  ends in one leaf (WriteSummary)."""
  import apache_beam as beam

  def pick(pcoll, label, kind):
    return (pcoll
            | f"Pick{label}" >> beam.Filter(lambda tagged, kind=kind: tagged[0] == kind)
            | f"Untag{label}" >> beam.Map(lambda tagged: tagged[1]))

  def tag(pcoll, label, kind):
    return pcoll | f"Tag{label}" >> beam.Map(lambda kv, kind=kind: (kv[0], (kind, kv[1])))

  shards = (pipeline
            | "ShardIds" >> beam.Create(list(range(len(cfg.paths))))
            | "SpreadShards" >> beam.Reshuffle())
  tokens = shards | "TokensCounted" >> beam.Map(_shard_tokens_counted(cfg))
  parts = []
  current = shards
  for n in range(2, cfg.max_n + 1):
    merged = (current
              | f"CountShard{n}" >> beam.FlatMap(_measured("CountShard", _count_step(cfg, n)))
              | f"GroupBucket{n}" >> beam.GroupByKey()
              | f"MergeBucket{n}" >> beam.FlatMap(_measured("MergeBucket", _merge_step(cfg, n))))
    parts.append(pick(merged, f"Survivors{n}", "rank"))
    if n < cfg.max_n:
      current = pick(merged, f"ToShards{n}", "next") | f"GroupShard{n}" >> beam.GroupByKey()
  survivors = parts | "AllPasses" >> beam.Flatten()
  cut = (survivors
         | "Histogram" >> beam.Map(_histogram(cfg))
         | "GroupHistogram" >> beam.GroupByKey()
         | "Cutoff" >> beam.FlatMap(_measured("Cutoff", _cutoff(cfg))))
  selected = ((tag(survivors, "Parts", "data"), pick(cut, "CutParts", "part"))
              | "PartsAndCut" >> beam.Flatten()
              | "GroupPart" >> beam.GroupByKey()
              | "Select" >> beam.FlatMap(_measured("Select", _select(cfg))))
  splitters = (selected
               | "Sample" >> beam.FlatMap(_samples(cfg))
               | "GroupSamples" >> beam.GroupByKey()
               | "Splitters" >> beam.FlatMap(_splitters(cfg)))
  routed = ((tag(selected, "Selected", "data"), splitters)
            | "SelectedAndSplitters" >> beam.Flatten()
            | "GroupSelected" >> beam.GroupByKey()
            | "Route" >> beam.FlatMap(_measured("Route", _route)))
  starts = ((pick(routed, "Sizes", "size"), pick(cut, "CutGroups", "groups"))
            | "SizesAndGroups" >> beam.Flatten()
            | "GroupSizes" >> beam.GroupByKey()
            | "RangeStarts" >> beam.FlatMap(_measured("RangeStarts", _range_starts)))
  files = ((pick(routed, "Rows", "rows"), starts)
           | "RowsAndStarts" >> beam.Flatten()
           | "GroupRange" >> beam.GroupByKey()
           | "RankRange" >> beam.FlatMap(_measured("RankRange", _rank_range(cfg))))
  written = ((files, pick(cut, "CutFiles", "file"))
             | "FilesAndCounts" >> beam.Flatten()
             | "GroupFile" >> beam.GroupByKey()
             | "WriteFile" >> beam.Map(_measured("WriteFile", _write_file(cfg))))
  _ = ((written, tokens, pick(cut, "CutSummary", "summary"))
       | "SummaryParts" >> beam.Flatten()
       | "GroupSummary" >> beam.GroupByKey()
       | "WriteSummary" >> beam.Map(_write_summary(cfg)))


def default_num_buckets(num_shards: int) -> int:
  return max(8, 4 * num_shards)


def run_count(shard_paths: list[str], result_dir: str, *, vocab_size: int, special_ids=(), max_n: int, size: int,
              min_count: int = 5, beam_args=None, num_buckets: int | None = None, sample_every: int | None = None,
              rows_per_file: int = vocab_lib.ROWS_PER_FILE) -> dict:
  """Runs the pipeline; result_dir (local or a Beam FileSystems path) gets the ranked parquet files
  (vocab.file_names) and SUMMARY; returns the summary {tokens_counted, num_fgrams, files}."""
  import apache_beam as beam
  from apache_beam.io.filesystems import FileSystems
  from apache_beam.options.pipeline_options import PipelineOptions
  validate_params(max_n, size, min_count)
  check_vocab_size(vocab_size)
  if not shard_paths:
    raise UserError("no train shards to count")
  cfg = _Config(sorted(shard_paths), vocab_size, special_ids, max_n, size, min_count,
                num_buckets or default_num_buckets(len(shard_paths)),
                sample_every or RANGE_ROWS, rows_per_file, result_dir)
  args = parse_beam_args(beam_args)
  if any(a.endswith(RUNNER_ALIASES["DaskRunner"]) for a in args) and not any(
      a.startswith(("--dask_npartitions", "--dask_partition_size")) for a in args):
    args.append(f"--dask_npartitions={_dask_partitions(args, len(cfg.paths))}")
  pipeline = beam.Pipeline(options=PipelineOptions(args))
  build_pipeline(pipeline, cfg)
  _run(pipeline.run())
  with FileSystems.open(FileSystems.join(result_dir, SUMMARY)) as f:
    return json.loads(f.read().decode())


def _dask_partitions(args: list[str], num_shards: int) -> int:
  """Dask partitions (tasks per stage) when --beam_args names none: one per worker thread of the
  cluster (the runner's own default puts up to 128 created elements, here all shards, in one
  task; more partitions than threads only add tasks, since each Flatten adds up partitions)."""
  address = next((a.split("=", 1)[1] for a in args if a.startswith("--dask_client_address=")), None)
  threads = os.cpu_count() or 1
  if address:
    from dask.distributed import Client
    with Client(address, timeout=30) as client:
      threads = sum(client.nthreads().values()) or 1
  return max(1, min(num_shards, threads))


def count_fgrams_beam(shard_paths: list[str], *, vocab_size: int, special_ids=(), max_n: int, size: int,
                      min_count: int = 5, beam_args=None, tmp_dir: str | None = None,
                      num_buckets: int | None = None, sample_every: int | None = None,
                      rows_per_file: int = vocab_lib.ROWS_PER_FILE) -> FgramVocab:
  """Runs the pipeline and returns the same FgramVocab as scone_jax.fgram.count.count_fgrams on the
  same documents (vocab_size only goes into its meta)."""
  from apache_beam.io.filesystems import FileSystems
  with beam_result_dir(beam_args, tmp_dir) as result_dir:
    summary = run_count(shard_paths, result_dir, vocab_size=vocab_size, special_ids=special_ids, max_n=max_n,
                        size=size, min_count=min_count, beam_args=beam_args, num_buckets=num_buckets,
                        sample_every=sample_every, rows_per_file=rows_per_file)
    flats, lengths, counts = [], [], []
    for name in summary["files"]:
      with FileSystems.open(FileSystems.join(result_dir, name)) as f:
        flat, offsets, count = vocab_lib.read_rows(f, where=name)
      flats.append(flat)
      lengths.append(np.diff(offsets))
      counts.append(count)
  meta = counted_meta(max_n=max_n, size=size, min_count=min_count, vocab_size=vocab_size,
                      tokens_counted=summary["tokens_counted"], num_fgrams=summary["num_fgrams"])
  if not counts:
    return FgramVocab(np.empty(0, np.int32), np.zeros(1, np.int64), np.empty(0, np.int64), meta)
  offsets = np.zeros(sum(len(c) for c in counts) + 1, np.int64)
  np.cumsum(np.concatenate(lengths), out=offsets[1:])
  return FgramVocab(np.concatenate(flats), offsets, np.concatenate(counts), meta)


class beam_result_dir:
  """A fresh result directory: under --temp_location when the options name one (remote runners),
  else a local temporary directory under tmp_dir; removed at the end."""

  def __init__(self, beam_args, tmp_dir):
    self.beam_args, self.tmp_dir, self.path, self.remote = beam_args, tmp_dir, None, False

  def __enter__(self) -> str:
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions
    remote = PipelineOptions(parse_beam_args(self.beam_args)).view_as(GoogleCloudOptions).temp_location
    if remote:
      self.path, self.remote = FileSystems.join(remote, f"fgrams-{uuid.uuid4().hex}"), True
      FileSystems.mkdirs(self.path)
    else:
      self.path = tempfile.mkdtemp(prefix=".fgram-beam-", dir=self.tmp_dir)
    return self.path

  def __exit__(self, *exc):
    from apache_beam.io.filesystems import FileSystems
    if self.remote:
      if FileSystems.exists(self.path):
        FileSystems.delete([self.path])
    else:
      shutil.rmtree(self.path, ignore_errors=True)
    return False


def install_files(result_dir: str, summary: dict, out_dir: str, meta) -> None:
  """Copies the ranked files of a run into FG (atomically) and writes FG/meta.json."""
  from apache_beam.io.filesystems import FileSystems
  with atomic_directory(out_dir) as tmp:
    for name in summary["files"]:
      with FileSystems.open(FileSystems.join(result_dir, name)) as src, open(os.path.join(tmp, name), "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 22)
    vocab_lib.write_meta(tmp, meta, summary["files"], summary["num_fgrams"])
