"""A batch's distinct f-grams packed into rows for A_f as prefix trees, and the few static row
counts a run uses.

Why. A_f runs once per distinct f-gram of a batch. Padding every f-gram to K tokens and the list
to a never-overflowing bound made A_f execute 3.4x the token slots it needed on the demo corpus.
A_f is causal: its state at position j of an f-gram depends only on the f-gram's first j+1
tokens. So the f-grams of a batch that share a prefix share the slots of that prefix, and an
f-gram that is a prefix of another (V_f is closed under prefixes, and where "a b c d" matches at
i, the longest match at i-1 extends "a b c") is read off the longer one's slot: A_f runs once per
node of the batch's prefix tree (trie), not once per f-gram token. On the demo corpus (16 x 256
batches) the trie has 0.57x the slots of the f-grams laid end to end.

Layout (per process; `pack`): rows of `row_len` slots, each holding whole subtrees of the trie
in depth-first order (a subtree that does not fit starts a new row with its path from the root
repeated), the f-grams taken in lexicographic order of their tokens.
  tokens    int32 [R, row_len]   the node's token, 0 in free slots
  positions int32 [R, row_len]   the node's depth (position within its f-gram, 0..K-1)
  spans     int32 [R, row_len]   one past the last slot of the node's subtree (a free slot: its
                                 own slot + 1). Slot i attends to slot j iff j <= i < spans[j]:
                                 exactly its ancestors and itself (`tree_mask`)
  ends      int32 [R, per_row]   slot of the row's j-th f-gram's last token (0 if none)
  list index of the f-gram (row r, j-th in the row) = r * per_row + j
per_row (`outputs_per_row`) = row_len - row_len // K: a row of full-length chains (a K-gram
with its prefixes) has that many f-grams. A_f's outputs gathered at `ends` form a list of
R * per_row entries, computed row-locally (no gather across devices).

Static shapes. R (rows per process batch) must be the same on every process at a step, and a
jitted step compiles once per distinct R. `choose_buckets` picks a few values of R from a sample
of the data's needs (the run's first batches) minimising the executed slots; at each step the
smallest bucket that holds the need of every process is used; a need above the largest bucket
takes a larger one (one more compile), so a batch never stops a run.
"""
from __future__ import annotations

import dataclasses

import numpy as np

GROWTH = 1.25   # a need above every bucket adds one this much larger


def default_row_len(max_n: int) -> int:
  """Slots per packed row: 8 f-grams of the longest length, a multiple of 8."""
  return -(-8 * max_n // 8) * 8


def outputs_per_row(row_len: int, max_n: int) -> int:
  """F-grams one row may hold (list entries per row)."""
  return max(1, row_len - row_len // max_n)


def _sorted_with_lcp(tokens_NxK: np.ndarray, lengths_N: np.ndarray):
  """The f-grams in lexicographic order (a prefix before its extensions: -1 pads sort first) and
  each one's longest common prefix with the one before it (0 for the first)."""
  tokens_NxK = np.asarray(tokens_NxK)
  lengths_N = np.asarray(lengths_N).astype(np.int64)
  order = np.lexsort(tokens_NxK.T[::-1]) if len(lengths_N) else np.zeros(0, np.int64)
  st, ln = tokens_NxK[order], lengths_N[order]
  lcp = np.zeros(len(ln), np.int64)
  if len(ln) > 1:
    same = (st[1:] == st[:-1]) & (st[1:] >= 0)
    lcp[1:] = np.cumprod(same, axis=1).sum(axis=1)
  return order, st, ln, np.minimum(lcp, np.maximum(ln - 1, 0))


def trie_nodes(tokens_NxK: np.ndarray, lengths_N: np.ndarray) -> int:
  """Slots A_f needs for these distinct f-grams: the nodes of their prefix tree (every distinct
  prefix, the f-grams included)."""
  _, _, ln, lcp = _sorted_with_lcp(tokens_NxK, lengths_N)
  return int((ln - lcp).sum())


@dataclasses.dataclass(frozen=True)
class Plan:
  """How a set of distinct f-grams fills rows (`plan`): computed once, read by the row count,
  the needed slots and `pack`."""
  order: np.ndarray     # the f-grams' lexicographic order
  tokens: np.ndarray    # their tokens in that order
  lengths: np.ndarray
  lcp: np.ndarray       # each one's longest common prefix with the one before it
  rows: int
  row: np.ndarray       # row of each (sorted) f-gram
  depth0: np.ndarray    # depth of its first node new to its row
  start: np.ndarray     # slot of that node

  @property
  def nodes(self) -> int:
    """The prefix tree's nodes (trie_nodes)."""
    return int((self.lengths - self.lcp).sum())


def plan(tokens_NxK: np.ndarray, lengths_N: np.ndarray, row_len: int, per_row: int) -> Plan:
  """Greedy rows over the sorted f-grams: each takes the slots of its nodes that its row lacks
  (all of them in a new row)."""
  order, st, ln, lcp = _sorted_with_lcp(tokens_NxK, lengths_N)
  n = len(ln)
  row, depth0, start = np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, np.int64)
  r, used, outs = -1, row_len + 1, 0
  for i, (length, shared) in enumerate(zip(ln.tolist(), lcp.tolist())):
    if used + length - shared > row_len or outs == per_row:
      r, used, outs, shared = r + 1, 0, 0, 0
    row[i], depth0[i], start[i] = r, shared, used
    used += length - shared
    outs += 1
  return Plan(order, st, ln, lcp, r + 1, row, depth0, start)


def rows_needed(tokens_NxK: np.ndarray, lengths_N: np.ndarray, row_len: int, per_row: int) -> int:
  return plan(tokens_NxK, lengths_N, row_len, per_row).rows


def pack(tokens_NxK: np.ndarray, lengths_N: np.ndarray, rows: int, row_len: int, per_row: int,
         planned: Plan | None = None) -> tuple[dict, np.ndarray]:
  """Packs N distinct f-grams (tokens left-aligned and -1 padded to K, lengths 2..K) into `rows`
  rows (`planned`: their `plan`, if already made). Returns (the arrays of the module docstring,
  int32 [N] list index of each f-gram). ValueError if they need more rows."""
  out = {"tokens": np.zeros((rows, row_len), np.int32), "positions": np.zeros((rows, row_len), np.int32),
         "spans": np.tile(np.arange(1, row_len + 1, dtype=np.int32), (rows, 1)),
         "ends": np.zeros((rows, per_row), np.int32)}
  index = np.full(len(lengths_N), -1, np.int32)
  if len(lengths_N) == 0:
    return out, index
  p = planned or plan(tokens_NxK, lengths_N, row_len, per_row)
  order, st, ln, row, depth0, start = p.order, p.tokens, p.lengths, p.row, p.depth0, p.start
  if p.rows > rows:
    raise ValueError(f"{len(ln)} f-grams need {p.rows} rows of {row_len}, more than {rows}")
  new = ln - depth0
  # every new node of every f-gram: its row, slot and depth
  first = np.repeat(np.cumsum(new) - new, new)
  k = np.arange(int(new.sum())) - first
  f = np.repeat(np.arange(len(ln)), new)
  rows_s, depth = row[f], depth0[f] + k
  cols_s = start[f] + k
  out["tokens"][rows_s, cols_s] = st[f, depth]
  depth_RxP = np.full((rows, row_len), -1, np.int64)
  depth_RxP[rows_s, cols_s] = depth
  out["positions"][rows_s, cols_s] = depth
  # A node's subtree ends at the next slot of its row no deeper than it (free slots are depth -1).
  later = np.arange(row_len)[None, :] > np.arange(row_len)[:, None]                # [j, i]: i > j
  ends_subtree = later[None] & (depth_RxP[:, None, :] <= depth_RxP[:, :, None])     # [R, j, i]
  out["spans"] = np.where(ends_subtree.any(axis=2), ends_subtree.argmax(axis=2), row_len).astype(np.int32)
  j = np.arange(len(ln)) - np.searchsorted(row, row, side="left")   # rank of the f-gram within its row
  out["ends"][row, j] = start + new - 1
  index[order] = row * per_row + j
  return out, index


def tree_mask(spans_RxP, xp=np):
  """[R, 1, P, P] bool attention mask of packed trie rows: slot i sees slot j iff j <= i <
  spans[j] (its ancestors and itself). xp: numpy, or jax.numpy inside a jitted step."""
  slots = xp.arange(spans_RxP.shape[-1])
  query, key = slots[None, :, None], slots[None, None, :]
  return ((key <= query) & (query < spans_RxP[:, None, :]))[:, None]


def round_up(x: int, granularity: int) -> int:
  return max(granularity, -(-int(x) // granularity) * granularity)


def choose_buckets(needs, max_buckets: int, granularity: int = 1) -> list[int]:
  """At most max_buckets values of R (multiples of granularity, the largest = the largest need)
  minimising the sum over the sample of the smallest bucket >= each need (dynamic programming over
  the sorted distinct needs)."""
  values = sorted({round_up(x, granularity) for x in needs})
  if not values:
    return [granularity]
  weight = {v: 0 for v in values}
  for x in needs:
    weight[round_up(x, granularity)] += 1
  w = np.array([weight[v] for v in values], np.float64)
  prefix = np.concatenate([[0.0], np.cumsum(w)])
  m, b = len(values), max(1, min(max_buckets, len(values)))
  # cost[i][j]: needs values[i..j] all run at bucket values[j]
  inf = float("inf")
  best = np.full((b + 1, m + 1), inf)   # best[k][j]: first j values covered with k buckets, the last at j-1
  choice = np.zeros((b + 1, m + 1), np.int64)
  best[0][0] = 0.0
  for k in range(1, b + 1):
    for j in range(1, m + 1):
      for i in range(j):   # the previous bucket ends at i-1; values[i..j-1] run at values[j-1]
        if best[k - 1][i] == inf:
          continue
        c = best[k - 1][i] + values[j - 1] * (prefix[j] - prefix[i])
        if c < best[k][j]:
          best[k][j], choice[k][j] = c, i
  k = int(np.argmin(best[:, m]))
  out, j = [], m
  while k > 0:
    out.append(values[j - 1])
    j = int(choice[k][j])
    k -= 1
  return sorted(out)


class Buckets:
  """The static row counts of a run: the smallest bucket holding a need. A need above every
  bucket takes the first of top * GROWTH^k (rounded up) that holds it: never an error, and the
  same shape for the same need whatever came before (a resumed run compiles the same steps)."""

  def __init__(self, sizes: list[int], granularity: int = 1):
    self.sizes, self.granularity = sorted(round_up(s, granularity) for s in sizes), granularity

  def fit(self, need: int) -> int:
    for size in self.sizes:
      if size >= need:
        return size
    size = self.sizes[-1]
    while size < need:
      size = round_up(int(np.ceil(size * GROWTH)), self.granularity)
    return size
