"""The exact f-gram matcher (docs/METHODS.md 1.2) and the per-batch dedup of matched f-grams.

For position i the match is the longest x_{j..i}, 2 <= i-j+1 <= K, that is in V_f; never across a
segment boundary. V_f is closed under suffixes, so a match grows from length 2 upward and stops at
the first miss: at most K-1 table lookups per position, each vectorised over all live positions.

Why it is exact: every f-gram g gets an integer key that encodes it injectively,
  key(g) = g[0] * R + ref(g[1:]),  ref(t) = t for one token, ref(s) = base + id(s) for an f-gram,
with base = (largest token id in V_f) + 1 and R = base + S. Equal keys mean equal first tokens
and equal suffixes, so (by induction on the length) equal f-grams. The query for length n at
position i is built from x_{i-n+1} and the id found at length n-1, so a stored key equal to it
*is* x_{i-n+1..i}. Keys are compared in full; the hash only chooses where to look, so a
collision costs a comparison, never a wrong answer (tests plant a constant hash to prove it).

Table: linear probing over 2^k >= S / max_load slots, laid out in Robin Hood order (entries
sorted by home slot), which keeps the longest probe run short (5 at S = 1M and 10M, load 0.25).
Where the numbers fit, key and id share one uint64 entry (key << id_bits | id), so most lookups
cost one random memory read; bit 63 flags "the next entry is displaced", so most misses stop
there too. Everything runs as whole-array numpy steps over all positions of a chunk, at most
K-1 lookups deep, each with at most three reads per query (home, then two windowed reads).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from scone_jax.errors import UserError

_MIX = np.uint64(0x9E37_79B9_7F4A_7C15)
_MORE = np.uint64(2**63)  # entry flag: the next entry is displaced (see _place)
_EMPTY = np.uint64(2**63 - 1)  # an empty slot: above every query key (see _build), no flag
CHUNK = 1 << 16  # positions per vectorised pass: big enough to amortise Python, small for cache
MAX_LOAD = 0.25  # keys per slot, at most: at 0.5 lookups take ~1.4x as long (more displaced keys)

HashFn = Callable[[np.ndarray], np.ndarray]


def fibonacci_hash(keys: np.ndarray) -> np.ndarray:
  """uint64 -> uint64 (Knuth's multiplicative hash); the top bits, which pick the slot, depend
  on every key bit."""
  return keys * _MIX


class ExactMatcher:
  """Longest-suffix f-gram match per position, exact, vectorised with numpy.

  Build once per vocabulary (S = 10M: about 10 s and 512 MiB at the default load, 8 bytes per
  slot); then `match` for training batches, `match_last` for decoding. Immutable once built,
  so threads and forked workers may share one.
  """

  def __init__(self, vocab, max_n: int | None = None, hash_fn: HashFn | None = None,
               max_load: float = MAX_LOAD):
    """vocab: a scone_jax.fgram.vocab.FgramVocab (its meta.max_n is K unless max_n is given).
    hash_fn: uint64 keys -> uint64 hashes, whose top bits pick the slot; a hook for tests
    (a constant hash must still give exact answers). max_load: f-grams per slot, at most."""
    k = max_n if max_n is not None else int(vocab.meta.max_n)
    self._build(np.asarray(vocab.flat), np.asarray(vocab.offsets), k, hash_fn or fibonacci_hash, max_load)

  @classmethod
  def checked(cls, vocab, where: str) -> "ExactMatcher":
    """The matcher of a vocabulary a user gave (FG at `where`): a vocabulary it cannot match
    (not closed under suffixes, ids too large for its keys, ...) is a one-line UserError."""
    try:
      return cls(vocab)
    except ValueError as e:
      raise UserError(f"f-grams {where!r} cannot be matched ({e}); rebuild them with `scone-jax fgrams build`") from e

  @classmethod
  def from_arrays(cls, flat, offsets, max_n: int, hash_fn: HashFn | None = None,
                  max_load: float = MAX_LOAD) -> "ExactMatcher":
    """flat int32 [sum of lengths], offsets int64 [S + 1]: f-gram r is flat[offsets[r]:offsets[r+1]]."""
    self = cls.__new__(cls)
    self._build(np.asarray(flat), np.asarray(offsets), int(max_n), hash_fn or fibonacci_hash, max_load)
    return self

  @property
  def nbytes(self) -> int:
    """Host memory held by the table."""
    return self._entries.nbytes + (0 if self._entry_ids is None else self._entry_ids.nbytes)

  @property
  def max_probe(self) -> int:
    """Largest distance of any f-gram from its home slot."""
    return self._max_probe

  # ---- construction -------------------------------------------------------------------------

  def _build(self, flat: np.ndarray, offsets: np.ndarray, max_n: int, hash_fn: HashFn,
             max_load: float) -> None:
    if max_n < 2:
      raise ValueError(f"max_n must be >= 2, got {max_n}")
    if not 0 < max_load <= 0.5:
      raise ValueError(f"max_load must lie in (0, 0.5], got {max_load}")
    flat = flat.astype(np.int64, copy=False)
    offsets = offsets.astype(np.int64, copy=False)
    lengths = np.diff(offsets)
    num = len(lengths)
    self.max_n, self.num_fgrams, self._hash_fn = max_n, num, hash_fn
    self._chunk = CHUNK
    if num and (lengths.min() < 2 or lengths.max() > max_n):
      raise ValueError(f"f-gram lengths must lie in 2..{max_n}, got {lengths.min()}..{lengths.max()}")
    if flat.size and flat.min() < 0:
      raise ValueError("f-gram token ids must be >= 0")
    self._base = int(flat.max()) + 1 if flat.size else 0
    radix = self._base + num
    # Query keys stay below (base + 1) * radix (`base` stands first in a window that may not
    # start); bit 63 of an entry is the "next entry is displaced" flag (see _place).
    id_bits = max(1, (num - 1).bit_length())
    if (self._base + 1) * radix << id_bits < 2**63:
      self._id_bits = id_bits  # key and id packed into one uint64
    elif (self._base + 1) * radix < 2**63:
      self._id_bits = 0  # key alone; ids in a parallel array
    else:
      raise ValueError(f"(largest token id + 2) * (largest token id + 1 + S) = {(self._base + 1) * radix} "
                       "does not fit 63 bits")
    self._radix = np.uint64(radix)
    self._key_mask = np.uint64(2**63 - 2**self._id_bits)
    self._id_mask = np.uint64(2**self._id_bits - 1)
    slots = 16
    while slots * max_load < num:
      slots *= 2
    self._slot_shift = np.uint64(64 - (slots.bit_length() - 1))  # slot = top bits of the hash
    self._slots = slots
    keys_so_far, ids_so_far = np.zeros(0, np.uint64), np.zeros(0, np.int64)
    self._place(keys_so_far, ids_so_far)
    shift = np.uint64(self._id_bits)
    for n in range(2, max_n + 1):
      rows = np.flatnonzero(lengths == n)
      if rows.size == 0:
        continue
      starts = offsets[rows]
      ref = flat[starts + n - 1].astype(np.uint64) << shift
      for m in range(2, n):  # the id of the (n-1)-suffix: match the f-gram's own tail
        found = self._find(((flat[starts + n - m].astype(np.uint64) * self._radix) << shift) + ref)
        if (found < 0).any():
          bad = int(rows[np.flatnonzero(found < 0)[0]])
          raise ValueError(f"the vocabulary is not closed under suffixes: f-gram {bad} "
                           f"{tuple(int(t) for t in flat[offsets[bad]:offsets[bad + 1]])} lacks its "
                           f"length-{m} suffix")
        ref = (found.astype(np.uint64) + np.uint64(self._base)) << shift
      keys = ((flat[starts].astype(np.uint64) * self._radix) << shift) + ref
      ordered = np.sort(keys)
      if (ordered[1:] == ordered[:-1]).any():
        raise ValueError(f"the vocabulary lists a length-{n} f-gram twice")
      keys_so_far = np.concatenate([keys_so_far, keys])
      ids_so_far = np.concatenate([ids_so_far, rows])
      self._place(keys_so_far, ids_so_far)  # lengths >= n+1 look their suffixes up in it

  def _place(self, keys: np.ndarray, ids: np.ndarray) -> None:
    """Linear probing laid out in Robin Hood order: entries sorted by home slot, each at
    max(home, previous position + 1), so every slot from an entry's home to its position is
    full. Bit 63 of the entry at p says "the entry at p + 1 is displaced (its home <= p)": a
    lookup from home h goes on past p only then, so a miss usually costs one read."""
    home = self._home(keys)
    order = np.argsort(home, kind="stable")  # within a home, lower ids (more frequent) first
    home, rank = home[order], np.arange(len(keys))
    position = np.maximum.accumulate(home - rank) + rank if len(keys) else rank
    self._max_probe = int((position - home).max()) if len(keys) else 0
    # The tail past the last slot takes spilled entries and the lookup's window.
    size = max(self._slots, int(position[-1]) + 1 if len(keys) else 0) + self._max_probe + 1
    self._entries = np.full(size, _EMPTY, dtype=np.uint64)
    self._entries[position] = keys[order] | ids[order].astype(np.uint64) if self._id_bits else keys[order]
    displaced = position[position > home]
    self._entries[displaced - 1] |= _MORE
    self._entry_ids = None
    if not self._id_bits:
      self._entry_ids = np.full(size, -1, dtype=np.int32)
      self._entry_ids[position] = ids[order]

  # ---- lookup -------------------------------------------------------------------------------

  def _home(self, keys: np.ndarray) -> np.ndarray:
    """uint64 keys -> int64 home slots in 0..slots-1: the top bits of the hash."""
    hashes = np.asarray(self._hash_fn(keys), dtype=np.uint64)
    if np.shares_memory(hashes, keys):  # a hook may hand back its input
      return (hashes >> self._slot_shift).view(np.int64)
    hashes >>= self._slot_shift
    return hashes.view(np.int64)

  def _ids_of(self, entries: np.ndarray, where: np.ndarray, pick) -> np.ndarray:
    """The ids of entries[pick], read from where[pick]."""
    if self._entry_ids is None:
      return (entries[pick] & self._id_mask).astype(np.int32)
    return self._entry_ids[where[pick]]

  def _lookup(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint64 queries [m] -> (hits: indices into queries of those in the table, int64; their
    f-gram ids, int32). One read at the home slot settles most queries; the rest (the entry
    after home is displaced) scan the max_probe slots after home in one windowed read, which is
    exact because a key sits at most max_probe slots past its home and nowhere else."""
    where = self._home(queries)
    entries = self._entries[where]
    hit_mask = (entries & self._key_mask) == queries
    hits = np.flatnonzero(hit_mask)
    ids = self._ids_of(entries, where, hits)
    pending = np.flatnonzero(entries >= _MORE)
    pending = pending[~hit_mask[pending]]
    if pending.size == 0:
      return hits, ids
    hits, ids = [hits], [ids]
    # Most pending keys sit one or two slots on: a narrow window first, the full one after.
    for first, width in ((1, min(2, self._max_probe)), (3, self._max_probe - 2)):
      if width <= 0 or pending.size == 0:
        break
      offsets = np.arange(first, first + width)
      block = max(1, (1 << 20) // width)  # bounds the window's memory for a degenerate hash
      missed = []
      for lo in range(0, pending.size, block):
        rows = pending[lo:lo + block]
        window = where[rows, None] + offsets
        stored = self._entries[window]
        eq = (stored & self._key_mask) == queries[rows, None]
        col = eq.argmax(axis=1)
        row_hit = eq[np.arange(rows.size), col]
        found = np.flatnonzero(row_hit)
        hits.append(rows[found])
        ids.append(self._ids_of(stored, window, (found, col[found])))
        # Go on only where the last slot of this window still has a displaced successor.
        missed.append(rows[~row_hit & (stored[:, -1] >= _MORE)])
      pending = np.concatenate(missed)
    return np.concatenate(hits), np.concatenate(ids)

  def _find(self, queries: np.ndarray) -> np.ndarray:
    """uint64 queries [m] -> f-gram id int32 [m], -1 where absent."""
    hits, ids = self._lookup(queries)
    found = np.full(queries.shape, -1, dtype=np.int32)
    found[hits] = ids
    return found

  def _grow(self, first_part: np.ndarray, last_part: np.ndarray, ends: np.ndarray | None,
            fgram_id: np.ndarray, match_len: np.ndarray, lo: int = 0) -> None:
    """Grows matches from length 2 while the previous length matched.

    first_part uint64 [T+1] (see _key_parts), last_part uint64 [T]. Matches end at the flat
    positions `ends` (intp), or at lo, lo+1, ... when ends is None; results go to
    fgram_id/match_len (int32, aligned with those positions; match_len preset to 1)."""
    shift, base = np.uint64(self._id_bits), np.uint64(self._base)
    if ends is None:  # a contiguous run of positions: slices, no gathers, for length 2
      hi = lo + len(fgram_id)
      live, found = self._lookup(first_part[lo:hi] + last_part[lo:hi])
    else:
      live, found = self._lookup(first_part[ends] + last_part[ends])
    fgram_id.fill(-1)
    fgram_id[live] = found
    match_len[live] = 2
    for n in range(3, self.max_n + 1):
      if live.size == 0:
        return
      # first_part[j + 1] belongs to x_j, and the window of length n ending at i starts at i-n+1.
      window_start = (live + (lo - n + 2)) if ends is None else ends[live] - (n - 2)
      ref = (found.astype(np.uint64) + base) << shift
      hits, found = self._lookup(first_part[window_start] + ref)
      live = live[hits]
      fgram_id[live] = found
      match_len[live] = n

  def _key_parts(self, tokens: np.ndarray, same_run_as_next: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """tokens int64 [T]; same_run_as_next bool [T]: x_j and x_{j+1} are in one row and segment.
    Returns (first_part uint64 [T+1], last_part uint64 [T]): a query is first_part[j+1] + ref,
    where first_part[j+1] = x_j * R (shifted) if a window may run from x_j to x_{j+1}, else
    base * R, the key of no f-gram (so no match crosses a boundary, padding or a token that is
    in no f-gram, e.g. -1); first_part[0] is such a break too."""
    shift = np.uint64(self._id_bits)
    good = (tokens >= 0) & (tokens < self._base)
    ok = same_run_as_next & good
    ok[:-1] &= good[1:]
    ok[-1] = False
    as_key = tokens.astype(np.uint64)  # negative ids wrap; `good` masks them out
    first_part = np.empty(tokens.size + 1, dtype=np.uint64)
    first_part[0] = self._base
    first_part[1:] = np.where(ok, as_key, np.uint64(self._base))
    first_part *= np.uint64(int(self._radix) << self._id_bits)
    last_part = np.where(good, as_key, np.uint64(0))
    last_part <<= shift
    return first_part, last_part

  def match(self, tokens, segment_ids=None) -> tuple[np.ndarray, np.ndarray]:
    """tokens int [..., L]; segment_ids same shape or None (one segment per row); positions with
    segment_ids == 0 are padding: they never match and no match reaches across them.
    Returns (fgram_id int32 [..., L], -1 where unmatched; match_len int32 [..., L], 1 there)."""
    tokens = np.asarray(tokens)
    shape = tokens.shape
    if tokens.ndim == 0:
      raise ValueError("tokens must have at least one dimension [..., L]")
    if tokens.dtype.kind not in "iu":
      raise ValueError(f"tokens must be integer ids, got dtype {tokens.dtype}")
    flat_tokens = tokens.reshape(-1)
    total = flat_tokens.size
    if total == 0:
      return np.full(shape, -1, dtype=np.int32), np.ones(shape, dtype=np.int32)
    same_run = np.ones(shape, dtype=bool)
    same_run[..., -1] = False
    same_run = same_run.reshape(-1)
    if segment_ids is not None:
      segment_ids = np.asarray(segment_ids)
      if segment_ids.shape != shape:
        raise ValueError(f"segment_ids has shape {segment_ids.shape}, tokens {shape}")
      segment_ids = segment_ids.reshape(-1)
      same_run[:-1] &= segment_ids[:-1] == segment_ids[1:]
      same_run &= segment_ids != 0
    fgram_id = np.empty(total, dtype=np.int32)
    match_len = np.ones(total, dtype=np.int32)
    for lo in range(0, total, self._chunk):
      hi = min(total, lo + self._chunk)
      # Key parts from K-1 positions before the chunk: the longest window ending in it.
      before = max(0, lo - self.max_n + 1)
      first_part, last_part = self._key_parts(flat_tokens[before:hi], same_run[before:hi])
      self._grow(first_part, last_part, None, fgram_id[lo:hi], match_len[lo:hi], lo - before)
    return fgram_id.reshape(shape), match_len.reshape(shape)

  def match_last(self, history) -> tuple[np.ndarray, np.ndarray]:
    """Decode time. history int [B, H]: the last tokens of each sequence, the newest last,
    left-padded with -1 before a document start. Returns the match of the last position of each
    row: (fgram_id int32 [B], match_len int32 [B]); at most K-1 lookups per row."""
    history = np.asarray(history)
    if history.ndim != 2 or history.shape[1] == 0:
      raise ValueError(f"history must be [B, H] with H >= 1, got shape {history.shape}")
    if history.dtype.kind not in "iu":
      raise ValueError(f"history must be integer ids, got dtype {history.dtype}")
    window = history[:, -self.max_n:]
    rows, width = window.shape
    same_run = np.ones(window.shape, dtype=bool)
    same_run[:, -1] = False
    first_part, last_part = self._key_parts(window.reshape(-1), same_run.reshape(-1))
    fgram_id = np.empty(rows, dtype=np.int32)
    match_len = np.ones(rows, dtype=np.int32)
    ends = np.arange(1, rows + 1) * width - 1
    self._grow(first_part, last_part, ends, fgram_id, match_len)
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
