"""The exact f-gram matcher (METHODS.md 1.2) and the per-batch dedup of matched f-grams.

For position i the match is the longest x_{j..i}, 2 <= i-j+1 <= K, that is in V_f; never across a
segment boundary. V_f is closed under suffixes, so a match grows from length 2 upward and stops at
the first miss: at most K-1 table probes per position, each vectorised over all live positions.

Why it is exact: every f-gram g is stored under a 64-bit key that encodes it injectively,
  key(g) = g[0] << 32 | ref(g[1:]),  ref(t) = t for one token, ref(s) = base + id(s) for an f-gram,
where base = (largest token id in V_f) + 1. Two different f-grams never share a key (equal keys
mean equal first tokens and equal suffixes, by induction on the length). The query for length n
at position i is built from x_{i-n+1} and the id verified at length n-1, so a stored key equal to
the query *is* x_{i-n+1..i}. The hash only places keys in the table: a collision costs a probe,
never a wrong answer (tests plant a constant hash to prove it).

Table: open addressing with linear probing, power-of-2 capacity, load <= 0.5; `keys` uint64 and
`ids` int32 per slot, laid out in Robin Hood order (see _place). Lookups run as a bounded number
of whole-array steps: the largest displacement in the table bounds every probe run.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

EMPTY = np.uint64(0xFFFF_FFFF_FFFF_FFFF)  # never a key: stored keys have first token < 2**31
BROKEN = np.uint64(0xFFFF_FFFF << 32)  # high key half of a window that may not start here
_MIX = np.uint64(0x9E37_79B9_7F4A_7C15)
_SHIFT32 = np.uint64(32)
CHUNK = 1 << 15  # positions per vectorised pass: keeps the temporaries in cache

HashFn = Callable[[np.ndarray], np.ndarray]


def mix_hash(keys: np.ndarray) -> np.ndarray:
  """Multiply-xorshift of uint64 keys; the low bits (the slot) depend on every key bit."""
  h = keys * _MIX
  h ^= h >> _SHIFT32
  return h


class ExactMatcher:
  """Longest-suffix f-gram match per position, exact, vectorised with numpy.

  Build once per vocabulary (S = 10M takes seconds and about 12 * 2^ceil(log2(2S)) bytes);
  `match` for training batches, `match_last` for decoding.
  """

  def __init__(self, vocab, hash_fn: HashFn | None = None, max_n: int | None = None):
    """vocab: a scone_jax.fgram.vocab.FgramVocab (its meta.max_n is K unless max_n is given).
    hash_fn: uint64 keys -> uint64 hashes; the slot is hash & (capacity - 1). A test hook."""
    k = max_n if max_n is not None else int(vocab.meta.max_n)
    self._build(np.asarray(vocab.flat), np.asarray(vocab.offsets), k, hash_fn or mix_hash)

  @classmethod
  def from_arrays(cls, flat, offsets, max_n: int, hash_fn: HashFn | None = None) -> "ExactMatcher":
    """flat int32 [sum of lengths], offsets int64 [S + 1]: f-gram r is flat[offsets[r]:offsets[r+1]]."""
    self = cls.__new__(cls)
    self._build(np.asarray(flat), np.asarray(offsets), int(max_n), hash_fn or mix_hash)
    return self

  # ---- construction -------------------------------------------------------------------------

  def _build(self, flat: np.ndarray, offsets: np.ndarray, max_n: int, hash_fn: HashFn) -> None:
    if max_n < 2:
      raise ValueError(f"max_n must be >= 2, got {max_n}")
    flat = flat.astype(np.int64, copy=False)
    offsets = offsets.astype(np.int64, copy=False)
    lengths = np.diff(offsets)
    num = len(lengths)
    self.max_n = max_n
    self.num_fgrams = num
    self._hash_fn = hash_fn
    if num and (lengths.min() < 2 or lengths.max() > max_n):
      raise ValueError(f"f-gram lengths must lie in 2..{max_n}, got {lengths.min()}..{lengths.max()}")
    if flat.size and (flat.min() < 0 or flat.max() >= 2**31):
      raise ValueError("f-gram token ids must lie in 0..2**31-1")
    self._base = int(flat.max()) + 1 if flat.size else 0
    if self._base + num >= 2**32:
      raise ValueError(f"largest token id + S = {self._base + num} does not fit the 32-bit key field")
    capacity = 16
    while capacity < 2 * num:
      capacity *= 2
    self._mask = np.uint64(capacity - 1)
    keys_so_far, ids_so_far = np.zeros(0, np.uint64), np.zeros(0, np.int32)
    self._place(keys_so_far, ids_so_far)
    for n in range(2, max_n + 1):
      rows = np.flatnonzero(lengths == n)
      if rows.size == 0:
        continue
      starts = offsets[rows]
      ref = flat[starts + n - 1].astype(np.uint64)
      for m in range(2, n):  # resolve the suffix of length n-1 by matching the f-gram's own tail
        found = self._lookup((flat[starts + n - m].astype(np.uint64) << _SHIFT32) | ref)
        if (found < 0).any():
          bad = int(rows[np.flatnonzero(found < 0)[0]])
          raise ValueError(f"the vocabulary is not closed under suffixes: f-gram {bad} "
                           f"{tuple(int(t) for t in flat[offsets[bad]:offsets[bad + 1]])} lacks its "
                           f"length-{m} suffix")
        ref = np.uint64(self._base) + found.astype(np.uint64)
      keys = (flat[starts].astype(np.uint64) << _SHIFT32) | ref
      ordered = np.sort(keys)
      if (ordered[1:] == ordered[:-1]).any():
        raise ValueError(f"the vocabulary lists a length-{n} f-gram twice")
      keys_so_far = np.concatenate([keys_so_far, keys])
      ids_so_far = np.concatenate([ids_so_far, rows.astype(np.int32)])
      self._place(keys_so_far, ids_so_far)  # lengths >= n+1 look their suffixes up in it

  def _place(self, keys: np.ndarray, ids: np.ndarray) -> None:
    """Lays out a linear-probing table in Robin Hood order: keys sorted by home slot, each at
    max(home, previous position + 1). Every probe run is then as short as linear probing allows
    (the longest displacement is about 10 at load 0.5 for 10M keys, against 30+ when keys are
    inserted first come, first served), and runs past the end spill into a tail, so no wrap."""
    home = (self._hash_fn(keys).astype(np.uint64) & self._mask).view(np.int64)
    order = np.argsort(home, kind="stable")
    home, rank = home[order], np.arange(len(keys))
    position = np.maximum.accumulate(home - rank) + rank if len(keys) else rank
    self._max_probe = int((position - home).max()) if len(keys) else 0
    size = max(int(self._mask) + 1, int(position[-1]) + 1 if len(keys) else 0) + self._max_probe + 1
    self._keys = np.full(size, EMPTY, dtype=np.uint64)
    self._ids = np.full(size, -1, dtype=np.int32)
    self._keys[position] = keys[order]
    self._ids[position] = ids[order]

  # ---- lookup -------------------------------------------------------------------------------

  def _lookup(self, queries: np.ndarray) -> np.ndarray:
    """uint64 keys [m] -> f-gram id int32 [m], -1 where absent; at most max_probe + 1 steps."""
    slot = (self._hash_fn(queries).astype(np.uint64) & self._mask).view(np.int64)
    stored = self._keys[slot]
    hit = stored == queries
    found = np.where(hit, self._ids[slot], np.int32(-1))
    # A slot holding another key means: probe on. An empty slot ends the search.
    pending = np.flatnonzero(~hit & (stored != EMPTY))
    if pending.size == 0:
      return found
    slot, queries = slot[pending], queries[pending]
    for _ in range(self._max_probe):
      slot += 1  # the table has a tail of max_probe slots: no wrap
      stored = self._keys[slot]
      hit = stored == queries
      if hit.any():
        found[pending[hit]] = self._ids[slot[hit]]
      go_on = ~hit & (stored != EMPTY)
      if not go_on.any():
        break
      pending, slot, queries = pending[go_on], slot[go_on], queries[go_on]
    return found

  def _grow(self, first_keys: np.ndarray, last_tokens: np.ndarray, ends: np.ndarray | None,
            fgram_id: np.ndarray, match_len: np.ndarray, lo: int = 0) -> None:
    """Grows matches from length 2 while the previous length matched.

    first_keys uint64 [T+1]: first_keys[j+1] = x_j << 32 if x_j and x_{j+1} are matchable tokens
    of one segment, else BROKEN (so a window through a boundary never matches); first_keys[0] =
    BROKEN. last_tokens uint64 [T] = x. Matches end at flat positions `ends` (intp), or at
    lo..lo+len(fgram_id) when ends is None; results go to fgram_id/match_len, aligned with them."""
    if ends is None:  # the common case: a contiguous run of positions, no gathers for n = 2
      hi = lo + len(fgram_id)
      found = self._lookup(first_keys[lo:hi] | last_tokens[lo:hi])
      ends_of = lo
    else:
      found = self._lookup(first_keys[ends] | last_tokens[ends])
      ends_of = ends
    fgram_id[:] = found
    live = np.flatnonzero(found >= 0)
    match_len[live] = 2
    ref = found[live].astype(np.uint64) + np.uint64(self._base)
    for n in range(3, self.max_n + 1):
      if live.size == 0:
        return
      starts = live + ends_of if ends is None else ends[live]
      found = self._lookup(first_keys[starts - (n - 2)] | ref)
      hit = np.flatnonzero(found >= 0)
      live, found = live[hit], found[hit]
      fgram_id[live] = found
      match_len[live] = n
      ref = found.astype(np.uint64) + np.uint64(self._base)

  def _first_keys(self, tokens: np.ndarray, same_run_as_next: np.ndarray) -> np.ndarray:
    """uint64 [T+1] the high key half per position, BROKEN where no window may start there."""
    keys = np.full(tokens.size + 1, BROKEN, dtype=np.uint64)
    good = (tokens >= 0) & (tokens < self._base)
    ok = same_run_as_next & good
    ok[:-1] &= good[1:]
    ok[-1] = False
    keys[1:] = np.where(ok, tokens, -1).astype(np.uint64) << _SHIFT32
    keys[1:][~ok] = BROKEN
    return keys

  def match(self, tokens, segment_ids=None) -> tuple[np.ndarray, np.ndarray]:
    """tokens int [..., L]; segment_ids same shape or None (one segment per row); positions with
    segment_ids == 0 are padding: they never match and no match reaches across them.
    Returns (fgram_id int32 [..., L], -1 where unmatched; match_len int32 [..., L], 1 there)."""
    tokens = np.asarray(tokens)
    shape = tokens.shape
    if tokens.ndim == 0:
      raise ValueError("tokens must have at least one dimension [..., L]")
    flat_tokens = tokens.reshape(-1).astype(np.int64)
    total = flat_tokens.size
    # same_run_as_next[j]: x_j and x_{j+1} lie in one row and one (non-padding) segment.
    same_run = np.ones(tokens.shape, dtype=bool)
    same_run[..., -1] = False
    same_run = same_run.reshape(-1)
    if segment_ids is not None:
      segment_ids = np.asarray(segment_ids).reshape(-1)
      if segment_ids.size != total:
        raise ValueError(f"segment_ids has shape {np.shape(segment_ids)}, tokens {shape}")
      same_run[:-1] &= segment_ids[:-1] == segment_ids[1:]
      same_run &= segment_ids != 0
    first_keys = self._first_keys(flat_tokens, same_run)
    last_tokens = flat_tokens.astype(np.uint64)
    fgram_id = np.empty(total, dtype=np.int32)
    match_len = np.ones(total, dtype=np.int32)
    for lo in range(0, total, CHUNK):
      hi = min(total, lo + CHUNK)
      self._grow(first_keys, last_tokens, None, fgram_id[lo:hi], match_len[lo:hi], lo)
    return fgram_id.reshape(shape), match_len.reshape(shape)

  def match_last(self, history) -> tuple[np.ndarray, np.ndarray]:
    """Decode time. history int [B, H]: the last tokens of each sequence, the newest last,
    left-padded with -1 before a document start. Returns the match of the last position of each
    row: (fgram_id int32 [B], match_len int32 [B]); at most K-1 probes per row."""
    history = np.asarray(history)
    if history.ndim != 2 or history.shape[1] == 0:
      raise ValueError(f"history must be [B, H] with H >= 1, got shape {history.shape}")
    window = history[:, -self.max_n:].astype(np.int64)
    rows, width = window.shape
    same_run = np.ones(window.shape, dtype=bool)
    same_run[:, -1] = False
    first_keys = self._first_keys(window.reshape(-1), same_run.reshape(-1))
    fgram_id = np.empty(rows, dtype=np.int32)
    match_len = np.ones(rows, dtype=np.int32)
    ends = np.arange(1, rows + 1) * width - 1
    self._grow(first_keys, window.reshape(-1).astype(np.uint64), ends, fgram_id, match_len)
    return fgram_id, match_len


def dedup_batch(fgram_ids, max_unique: int) -> tuple[np.ndarray, np.ndarray, int]:
  """fgram_ids int [B, L] (any shape), -1 = unmatched. Returns (unique_ids int32 [max_unique]
  sorted and padded with -1; index int32 [B, L] into unique_ids, -1 where unmatched; num_unique).
  unique_ids[index] == fgram_ids wherever matched. ValueError if more than max_unique distinct."""
  fgram_ids = np.asarray(fgram_ids)
  matched = fgram_ids >= 0
  unique, inverse = np.unique(fgram_ids[matched], return_inverse=True)
  if unique.size > max_unique:
    raise ValueError(f"the batch holds {unique.size} distinct f-grams, more than max_unique={max_unique}")
  unique_ids = np.full(max_unique, -1, dtype=np.int32)
  unique_ids[:unique.size] = unique
  index = np.full(fgram_ids.shape, -1, dtype=np.int32)
  index[matched] = inverse.reshape(-1)
  return unique_ids, index, int(unique.size)
