"""numpy kernels of the Beam f-gram counter (scone_jax.fgram.beam_count): one shard or one bucket
at a time, never one n-gram per Python object.

A set of distinct n-grams of one length travels as a Grams: a few arrays. When n ids fit 64 bits
side by side (n * bits(|V|) <= 64: n <= 4 at |V| = 50K) the key of an n-gram IS its ids, packed
(exact; key order is lexicographic order) and no token matrix travels. Longer n-grams carry their
tokens [U, n] and a 64-bit FNV-1a hash as the key, which only places the n-gram: every equality is
decided on the tokens (group_rows verifies id by id; a collision takes an exact lexicographic
path), so a hash collision can never change a count.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from scone_jax.data import shards
from scone_jax.errors import UserError
from scone_jax.fgram.count import SEPARATOR, document_tokens, mask_specials

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


def id_bits(vocab_size: int | None) -> int:
  """Bits per id in packed keys; None = never pack (64: only 1-grams would fit)."""
  return max(1, (vocab_size - 1).bit_length()) if vocab_size else 64


def packs(n: int, bits: int) -> bool:
  return n * bits <= 64


@dataclasses.dataclass
class Grams:
  """Distinct n-grams of one length. keys uint64 [U]: the packed ids (tokens None) or the tuple
  hashes of tokens int32 [U, n]; counts int64 [U] (None where only membership matters)."""
  n: int
  keys: np.ndarray
  tokens: np.ndarray | None
  counts: np.ndarray | None

  def __len__(self) -> int:
    return len(self.keys)

  def take(self, index) -> Grams:
    return Grams(self.n, self.keys[index], None if self.tokens is None else self.tokens[index],
                 None if self.counts is None else self.counts[index])

  def rows(self, bits: int) -> np.ndarray:
    """int32 [U, n]: the n-grams' ids."""
    return unpack_keys(self.keys, self.n, bits) if self.tokens is None else self.tokens

  @staticmethod
  def empty(n: int, bits: int) -> Grams:
    return Grams(n, np.empty(0, np.uint64), None if packs(n, bits) else np.empty((0, n), np.int32),
                 np.empty(0, np.int64))

  @staticmethod
  def concat(pieces: list[Grams], n: int, bits: int) -> Grams:
    if not pieces:
      return Grams.empty(n, bits)
    tokens = None if pieces[0].tokens is None else np.concatenate([p.tokens for p in pieces])
    counts = None if pieces[0].counts is None else np.concatenate([p.counts for p in pieces])
    return Grams(n, np.concatenate([p.keys for p in pieces]), tokens, counts)


# ---- hashing and buckets --------------------------------------------------------------------------

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


def buckets_of(keys: np.ndarray, num_buckets: int) -> np.ndarray:
  """Bucket of each key (splitmix64 finalizer, then modulo): the same on every worker."""
  x = keys.copy()
  x ^= x >> np.uint64(30)
  x *= np.uint64(0xBF58476D1CE4E5B9)
  x ^= x >> np.uint64(27)
  x *= np.uint64(0x94D049BB133111EB)
  x ^= x >> np.uint64(31)
  return (x % np.uint64(num_buckets)).astype(np.int64)


def bucket_order(buckets: np.ndarray, num_buckets: int) -> np.ndarray:
  """Stable argsort of bucket numbers (a radix sort: they fit 16 bits)."""
  return np.argsort(buckets.astype(np.uint16) if num_buckets <= 1 << 16 else buckets, kind="stable")


def bucket_parts(keys: np.ndarray, num_buckets: int) -> list[tuple[int, np.ndarray]]:
  """[(bucket, index of its keys)] for the buckets that hold keys, each index in keys' order."""
  if len(keys) == 0:
    return []
  buckets = buckets_of(keys, num_buckets)
  order = bucket_order(buckets, num_buckets)
  bounds = np.flatnonzero(np.diff(buckets[order])) + 1
  return [(int(buckets[sel[0]]), sel) for sel in np.split(order, bounds)]


def split_by_bucket(grams: Grams, num_buckets: int):
  """Yields (bucket, Grams of that bucket), each in the input's order."""
  for bucket, index in bucket_parts(grams.keys, num_buckets):
    yield bucket, grams.take(index)


# ---- exact grouping -------------------------------------------------------------------------------

def _totals(order: np.ndarray, heads: np.ndarray, counts: np.ndarray | None, size: int) -> np.ndarray:
  if counts is None:
    return np.diff(np.append(heads, size)).astype(np.int64)
  return np.add.reduceat(np.asarray(counts, np.int64)[order], heads) if len(heads) else np.empty(0, np.int64)


def group_rows(keys: np.ndarray, column, n: int, counts: np.ndarray | None = None, exact: bool = False,
               want_inverse: bool = True):
  """Groups N rows of n ids exactly. keys: uint64 per row, the packed ids (exact=True) or the
  rows' tuple hashes; column(j) gives the ids at place j of every row (unused when exact).
  Returns (first row of each group [U], summed counts [U] int64 (counts None = 1 per row),
  inverse [N] int64 or None when exact and not want_inverse), groups in ascending key order.

  One stable argsort of the keys (inputs are often concatenations of sorted runs: cheap); rows of
  one hash are compared id by id with the hash's first row, and only hashes that hold different
  rows (collisions, rare) are split exactly by a lexicographic sort of their rows."""
  size = len(keys)
  if size == 0:
    return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64)
  order = np.argsort(keys, kind="stable")
  head = np.empty(size, bool)
  head[0] = True
  sorted_keys = keys[order]
  np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=head[1:])
  del sorted_keys
  heads = np.flatnonzero(head)
  first = order[heads]
  if exact and not want_inverse:
    return first, _totals(order, heads, counts, size), None
  inverse = np.empty(size, np.int64)
  inverse[order] = np.cumsum(head, dtype=np.int64) - 1
  del head
  if exact:
    return first, _totals(order, heads, counts, size), inverse
  same = np.ones(size, bool)
  for j in range(n):
    col = column(j)
    same &= col == col[first[inverse]]
  if same.all():
    return first, _totals(order, heads, counts, size), inverse
  return _split_collisions(keys, column, n, counts, inverse, same, len(first))


def _split_collisions(keys, column, n, counts, inverse, same, num_keys):
  """group_rows' exact path: the rows of every key that holds different rows are regrouped by a
  lexicographic sort of their ids (then key), and the group ids compacted."""
  bad = np.zeros(num_keys, bool)
  bad[inverse[~same]] = True
  rows = np.flatnonzero(bad[inverse])
  cols = [column(j)[rows] for j in range(n)]
  order = np.lexsort(cols[::-1] + [keys[rows]])
  new = np.ones(len(rows), bool)
  new[1:] = keys[rows][order][1:] != keys[rows][order][:-1]
  for c in cols:
    new[1:] |= c[order][1:] != c[order][:-1]
  inverse = inverse.copy()
  inverse[rows[order]] = num_keys + np.cumsum(new) - 1
  used = np.bincount(inverse, minlength=num_keys + int(new.sum())) > 0
  inverse = (np.cumsum(used) - 1)[inverse]
  size = int(used.sum())
  first = np.empty(size, np.int64)
  first[inverse[::-1]] = np.arange(len(keys) - 1, -1, -1)
  totals = np.zeros(size, np.int64)
  np.add.at(totals, inverse, np.ones(len(keys), np.int64) if counts is None else np.asarray(counts, np.int64))
  return first, totals, inverse


def merge_grams(pieces: list[Grams], n: int, bits: int) -> Grams:
  """Sums the counts of equal n-grams over pieces: distinct Grams with totals, in ascending key order.
  Packed keys whose bits and the counts' fit 64 bits together are merged by one plain sort of
  key << count_bits | count (no gathers); the rest by group_rows."""
  if pieces and pieces[0].tokens is None:
    total = sum(len(p) for p in pieces)
    count_bits = max(1, max((int(p.counts.max()) for p in pieces if len(p)), default=1).bit_length())
    if total and n * bits + count_bits <= 64:
      packed = np.empty(total, np.uint64)
      at = 0
      for p in pieces:  # key << count_bits | count, written in place
        out = packed[at:at + len(p)]
        np.left_shift(p.keys, np.uint64(count_bits), out=out)
        out |= p.counts.astype(np.uint64)
        at += len(p)
      packed.sort()
      keys = packed >> np.uint64(count_bits)
      packed &= np.uint64((1 << count_bits) - 1)
      heads = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
      return Grams(n, keys[heads], None, np.add.reduceat(packed.view(np.int64), heads))
  every = Grams.concat(pieces, n, bits)
  tokens = every.tokens
  first, totals, _ = group_rows(every.keys, None if tokens is None else (lambda j: tokens[:, j]), n,
                                every.counts, exact=tokens is None, want_inverse=False)
  merged = every.take(first)
  merged.counts = totals
  return merged


def sorted_members(queries: np.ndarray, known: np.ndarray) -> np.ndarray:
  """bool per query: is it in known? Both uint64, ascending, distinct (exact keys): the smaller
  side is searched in the larger (sorted searches: cache-friendly)."""
  found = np.zeros(len(queries), bool)
  if len(queries) == 0 or len(known) == 0:
    return found
  if len(known) < len(queries):
    at = np.minimum(np.searchsorted(queries, known), len(queries) - 1)
    found[at[queries[at] == known]] = True
    return found
  at = np.minimum(np.searchsorted(known, queries), len(known) - 1)
  return known[at] == queries


def members(grams: Grams, known: Grams) -> np.ndarray:
  """bool per n-gram of grams: is it one of `known` (distinct, ascending key order, as merge_grams
  returns)? Packed keys: one searchsorted; hashed: every n-gram of known with the same hash is
  compared id by id."""
  found = np.zeros(len(grams), bool)
  if len(grams) == 0 or len(known) == 0:
    return found
  if grams.tokens is None:
    return sorted_members(grams.keys, known.keys) if _ascending_distinct(grams.keys) else (
      known.keys[np.minimum(np.searchsorted(known.keys, grams.keys), len(known) - 1)] == grams.keys)
  at = np.searchsorted(known.keys, grams.keys)
  while True:  # the k-th n-gram of known with the query's hash, k = 0, 1, ... (k > 0: collisions, rare)
    todo = np.flatnonzero(~found & (at < len(known)))
    todo = todo[known.keys[at[todo]] == grams.keys[todo]]
    if len(todo) == 0:
      return found
    found[todo[np.all(known.tokens[at[todo]] == grams.tokens[todo], axis=1)]] = True
    at[todo] += 1


def _ascending_distinct(keys: np.ndarray) -> bool:
  return bool(np.all(keys[1:] > keys[:-1]))


def group_exact(hashes: np.ndarray, tokens: np.ndarray, counts: np.ndarray | None = None):
  """Groups equal n-gram rows of tokens [N, n] exactly: (hashes [U], tokens [U, n], summed
  counts [U] int64, inverse [N])."""
  first, total, inverse = group_rows(hashes, lambda j: tokens[:, j], tokens.shape[1], counts)
  return hashes[first], tokens[first], total, inverse


# ---- windows of a token stream --------------------------------------------------------------------

def _slide(tokens: np.ndarray, m: int, combine) -> np.ndarray:
  """combine folded over the m columns of every window start 0..L-m (contiguous slices, no gathers)."""
  count = len(tokens) - m + 1
  out = None
  for j in range(m):
    out = combine(out, tokens[j:j + count].astype(np.uint64))
  return out


def packed_keys(tokens: np.ndarray, m: int, bits: int) -> np.ndarray:
  """Exact uint64 key of every window of m ids (m * bits <= 64): the ids side by side, so key
  order is lexicographic order. Windows holding SEPARATOR get meaningless keys (callers mask them)."""
  return _slide(tokens, m, lambda k, col: col if k is None else (k << np.uint64(bits)) | col)


def extend_keys(keys: np.ndarray, tokens: np.ndarray, m: int, bits: int) -> np.ndarray:
  """The packed keys of the windows of m + 1 ids from those of m ids (one shift and or)."""
  out = keys[:len(tokens) - m] << np.uint64(bits)
  out |= tokens[m:].astype(np.uint64)
  return out


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


def windows(tokens: np.ndarray, starts: np.ndarray, n: int) -> np.ndarray:
  out = np.empty((len(starts), n), np.int32)
  for j in range(n):
    out[:, j] = tokens[starts + j]
  return out


# ---- membership -----------------------------------------------------------------------------------

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


def _members(hashes, starts, tokens, m, survivors: Grams) -> np.ndarray:
  """bool per window (tokens[starts : starts + m], hashes = their tuple hashes): is it one of
  the survivors (hashed Grams sorted by key)? Verified id by id."""
  found = np.zeros(len(starts), bool)
  survivor_hashes, survivor_tokens = survivors.keys, survivors.tokens
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


# ---- one shard ------------------------------------------------------------------------------------

def shard_tokens(path: str, vocab_size: int, special_ids) -> np.ndarray:
  """One ArrayRecord shard as the local counter's token stream: documents back to back, each
  followed by SEPARATOR, special ids masked to SEPARATOR. The records are copied once into the
  output; a bad id raises the local counter's error for the first document that holds one."""
  records = list(shards.read_records(path))
  sizes = np.fromiter((len(r) for r in records), np.int64, len(records))
  if np.any(sizes % 4):
    i = int(np.flatnonzero(sizes % 4)[0])
    raise UserError(f"{path}: record {i} is {int(sizes[i])} bytes, not a whole number of int32 token ids: "
                    "the shard is corrupt; re-run `scone-jax prepare`")
  ends = np.cumsum(sizes // 4 + 1)  # one past each document's SEPARATOR
  out = np.empty(int(ends[-1]) if len(ends) else 0, "<i4")
  raw = out.view(np.uint8)
  at = 0
  for record in records:
    raw[at:at + len(record)] = np.frombuffer(record, np.uint8)
    at += len(record) + 4
  del records, raw
  separators = ends - 1
  out[separators] = SEPARATOR
  wrong = (out < 0) | (out >= vocab_size)
  wrong[separators] = False
  if wrong.any():
    i = int(np.searchsorted(separators, int(np.argmax(wrong))))
    document_tokens(out[ends[i] - 1 - sizes[i] // 4:ends[i] - 1], i, vocab_size, path)  # raises the counter's error
  return mask_specials(out.astype(np.int32, copy=False), special_ids)


BLOCK = 1 << 20         # positions per block where a kernel works block by block
PAIR_FILTER_BITS = 20   # a 1 MB table: stays in cache
PAIR_FILTER_MAX = 1 << 18  # survivors above this fill too much of it to filter


def _valid_starts(tokens: np.ndarray, m: int, survivors: Grams | None = None, bits: int = 64) -> np.ndarray:
  """Start of every window of m ids with no SEPARATOR that may be one of survivors (if given): its
  first id is some survivor's first id or, for few survivors, a hash of its first two ids is set
  in a table of those of the survivors (false positives only: callers check the window exactly)."""
  count = len(tokens) - m + 1
  ok = tokens[:count] != SEPARATOR
  for j in range(1, m):
    ok &= tokens[j:j + count] != SEPARATOR
  if survivors is not None:
    rows = survivors.rows(bits)
    if m >= 2 and len(rows) <= PAIR_FILTER_MAX:
      table = np.zeros(1 << PAIR_FILTER_BITS, bool)
      table[_pair_slots(rows[:, 0], rows[:, 1])] = True
      for lo in range(0, count, BLOCK):  # a block at a time: no N-long uint64 temporaries
        hi = min(count, lo + BLOCK)
        ok[lo:hi] &= table[_pair_slots(tokens[lo:hi], tokens[lo + 1:hi + 1])]
    else:
      first_ok = np.zeros(int(tokens.max()) + 1, bool)
      first = rows[:, 0]
      first_ok[first[first < len(first_ok)]] = True
      ok &= first_ok[np.maximum(tokens[:count], 0)]
  return np.flatnonzero(ok)  # int64: numpy converts other index types on every gather (2x slower)


def _pair_slots(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  h = a.astype(np.uint64) << np.uint64(32)
  h |= b.astype(np.uint32).astype(np.uint64)
  h *= np.uint64(0x9E3779B97F4A7C15)
  h >>= np.uint64(64 - PAIR_FILTER_BITS)
  return h.view(np.int64)


def window_keys(tokens: np.ndarray, starts: np.ndarray, m: int, bits: int) -> np.ndarray:
  """Packed keys of the windows of m ids at starts (ids read through shifted views of tokens:
  no index arrays beyond starts)."""
  keys = tokens[starts].astype(np.uint64)
  for j in range(1, m):
    keys <<= np.uint64(bits)
    keys |= tokens[j:][starts].astype(np.uint64)
  return keys


def window_hashes(tokens: np.ndarray, starts: np.ndarray, m: int) -> np.ndarray:
  return fold_hashes(tokens[j:][starts] for j in range(m))


def _alive(tokens: np.ndarray, m: int, bits: int, survivors: Grams) -> np.ndarray:
  """bool per window start 0..L-m: is the window of m ids there one of survivors? Packed keys
  that fit 64 bits with their start are sorted once (key << start_bits | start, a plain sort:
  the starts ride in the keys, so no other N-long array lives through the sort) and only the
  distinct ones looked up; other packed keys go through a hash table; hashed ones are verified."""
  alive = np.zeros(len(tokens) - m + 1, bool)
  starts = _valid_starts(tokens, m, survivors, bits)
  if not packs(m, bits):
    alive[starts[_members(window_hashes(tokens, starts, m), starts, tokens, m, survivors)]] = True
    return alive
  queries = window_keys(tokens, starts, m, bits)
  start_bits = max(1, (len(alive) - 1).bit_length())
  if m * bits + start_bits > 64:
    alive[starts[member_keys(survivors.keys, queries)]] = True
    return alive
  queries <<= np.uint64(start_bits)
  for lo in range(0, len(starts), BLOCK):  # a block at a time: no N-long temporary
    queries[lo:lo + BLOCK] |= starts[lo:lo + BLOCK].astype(np.uint64)
  del starts
  queries.sort()
  size = len(queries)
  new = np.empty(size, bool)
  if size:
    new[0] = True
  shift = np.uint64(start_bits)
  for lo in range(1, size, BLOCK):  # a new key where the bits above the start change
    hi = min(size, lo + BLOCK)
    np.not_equal(queries[lo:hi] >> shift, queries[lo - 1:hi - 1] >> shift, out=new[lo:hi])
  heads = np.flatnonzero(new)
  del new
  found = sorted_members(queries[heads] >> shift, survivors.keys)
  found = np.repeat(found, np.diff(heads, append=size))
  del heads
  queries &= np.uint64((1 << start_bits) - 1)   # now the starts, in key order
  alive[queries[found].view(np.int64)] = True
  return alive


def count_shard(tokens: np.ndarray, n: int, survivors: Grams | None = None, vocab_size: int | None = None) -> Grams:
  """The candidate n-grams of one token stream and their counts in it. survivors: this shard's
  (n-1)-grams that survived pass n-1, in ascending key order; None for n = 2. Candidates are
  windows whose (n-1)-prefix and (n-1)-suffix both survived and hold no SEPARATOR; only windows
  that pass _valid_starts' filter are looked up."""
  bits = id_bits(vocab_size)
  if len(tokens) < n:
    return Grams.empty(n, bits)
  if n == 2:
    candidates = _valid_starts(tokens, 2)
  else:
    m = n - 1
    alive = _alive(tokens, m, bits, survivors)
    candidates = np.flatnonzero(alive[:-1] & alive[1:])  # the (n-1)-prefix at i and the (n-1)-suffix at i + 1
    del alive
  if len(candidates) == 0:
    return Grams.empty(n, bits)
  if packs(n, bits):
    keys = window_keys(tokens, candidates, n, bits)
    del candidates
    keys.sort()
    heads = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
    return Grams(n, keys[heads], None, np.diff(np.append(heads, len(keys))).astype(np.int64))
  hashes = window_hashes(tokens, candidates, n)
  first, counts, _ = group_rows(hashes, lambda j: tokens[candidates + j], n)
  return Grams(n, hashes[first], windows(tokens, candidates[first], n), counts)


def sorted_by_key(grams: Grams) -> Grams:
  if grams.tokens is None and grams.counts is None:  # keys alone: a plain sort
    return Grams(grams.n, np.sort(grams.keys), None, None)
  return grams.take(np.argsort(grams.keys, kind="stable"))


def lex_keys(tokens: np.ndarray, prefix: np.ndarray | None = None) -> np.ndarray:
  """Fixed-width byte strings whose order is the lexicographic order of the rows (ids >= 0 as
  big-endian uint32), optionally after a big-endian int64 prefix (non-negative)."""
  parts = [] if prefix is None else [np.asarray(prefix, dtype=">i8").reshape(-1, 1).view(np.uint8)]
  parts.append(np.ascontiguousarray(tokens, dtype=">u4").view(np.uint8).reshape(len(tokens), -1))
  raw = np.ascontiguousarray(np.concatenate(parts, axis=1))
  return raw.view(f"S{raw.shape[1]}").reshape(-1)
