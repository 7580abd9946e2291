"""A batch's distinct f-grams packed into rows for A_f, and the few static row counts a run uses.

Why. A_f runs once per distinct f-gram of a batch. Padding every f-gram to K tokens and the list
to a never-overflowing bound made A_f execute 3.4x the token slots it needed on the demo corpus.
Here the f-grams are packed back to back into rows of `row_len` slots (several f-grams per row,
each its own attention segment with positions 0..n-1, as the main model packs documents), so the
executed slots are the needed ones (sum of the f-gram lengths) plus at most one slot per row.

Layout (per process; `pack`):
  tokens    int32 [R, row_len]   the f-grams' token ids back to back, 0 in free slots
  segments  int32 [R, row_len]   1, 2, ... per f-gram within its row, 0 = free slot
  positions int32 [R, row_len]   position within the f-gram (0..n-1)
  ends      int32 [R, row_len//2] slot of the j-th f-gram's last token in its row (0 if none)
  list index of the f-gram (row r, j-th in the row) = r * (row_len // 2) + j
Each row holds at most row_len // 2 f-grams (every f-gram has >= 2 tokens), so A_f's outputs
gathered at `ends` form a list of R * row_len // 2 entries, computed row-locally (no gather
across devices).

Rows per row are filled greedily by length, longest first (K, K-1, ..., 2): with many 2-grams
in a batch every row is full but for at most one slot.

Static shapes. R (rows per process batch) must be the same on every process at a step, and a
jitted step compiles once per distinct R. `choose_buckets` picks a few values of R from a sample
of the data's needs (the run's first batches) minimising the executed slots; at each step the
smallest bucket that holds the need of every process is used; a need above the largest bucket
takes a larger one (one more compile), so a batch never stops a run.
"""
from __future__ import annotations

import numpy as np

GROWTH = 1.25   # a need above every bucket adds one this much larger


def default_row_len(max_n: int) -> int:
  """Slots per packed row: 4 f-grams of the longest length, a multiple of 8."""
  return -(-4 * max_n // 8) * 8


def row_plan(lengths: np.ndarray, row_len: int) -> list[tuple[int, dict[int, int]]]:
  """How the f-grams of these lengths fill rows: [(number of identical rows, {n: f-grams of
  length n per row})], longest f-grams first."""
  counts = {int(n): int(c) for n, c in zip(*np.unique(lengths, return_counts=True))}
  plan = []
  while any(counts.values()):
    take, free = {}, row_len
    for n in sorted(counts, reverse=True):
      t = min(counts[n], free // n)
      if t:
        take[n], free = t, free - t * n
    repeat = min(counts[n] // t for n, t in take.items())
    plan.append((repeat, take))
    for n, t in take.items():
      counts[n] -= repeat * t
  return plan


def rows_needed(lengths: np.ndarray, row_len: int) -> int:
  return sum(repeat for repeat, _ in row_plan(lengths, row_len))


def pack(tokens_NxK: np.ndarray, lengths_N: np.ndarray, rows: int, row_len: int) -> tuple[dict, np.ndarray]:
  """Packs N f-grams (tokens right-padded to K, lengths 2..K) into `rows` rows. Returns (the
  arrays of the module docstring, int32 [N] list index of each f-gram). ValueError if they need
  more rows."""
  per_row = row_len // 2
  out = {"tokens": np.zeros((rows, row_len), np.int32), "segments": np.zeros((rows, row_len), np.int32),
         "positions": np.zeros((rows, row_len), np.int32), "ends": np.zeros((rows, per_row), np.int32)}
  lengths_N = np.asarray(lengths_N)
  index = np.full(len(lengths_N), -1, np.int32)
  if len(lengths_N) == 0:
    return out, index
  plan = row_plan(lengths_N, row_len)
  if sum(r for r, _ in plan) > rows:
    raise ValueError(f"{len(lengths_N)} f-grams need {sum(r for r, _ in plan)} rows of {row_len}, more than {rows}")
  # f-grams of each length, in their given order, consumed by the plan's rows
  by_len = {int(n): np.flatnonzero(lengths_N == n) for n in np.unique(lengths_N)}
  used = {n: 0 for n in by_len}
  row_ids, starts, js, fgram = [], [], [], []
  row0 = 0
  for repeat, take in plan:
    offset, j0 = 0, 0
    for n in sorted(take, reverse=True):
      t = take[n]
      count = repeat * t
      items = by_len[n][used[n]:used[n] + count]
      used[n] += count
      k = np.arange(count)
      row_ids.append(row0 + k // t)
      starts.append(offset + (k % t) * n)
      js.append(j0 + k % t)
      fgram.append(items)
      offset += t * n
      j0 += t
    row0 += repeat
  row_ids, starts, js, fgram = (np.concatenate(a) for a in (row_ids, starts, js, fgram))
  n_of = lengths_N[fgram]
  # every slot of every f-gram: its row, column and position within the f-gram
  total = int(n_of.sum())
  first = np.repeat(np.cumsum(n_of) - n_of, n_of)
  pos = np.arange(total) - first
  rows_s, cols_s = np.repeat(row_ids, n_of), np.repeat(starts, n_of) + pos
  out["tokens"][rows_s, cols_s] = tokens_NxK[np.repeat(fgram, n_of), pos]
  out["segments"][rows_s, cols_s] = np.repeat(js + 1, n_of)
  out["positions"][rows_s, cols_s] = pos
  out["ends"][row_ids, js] = starts + n_of - 1
  index[fgram] = row_ids * per_row + js
  return out, index


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
