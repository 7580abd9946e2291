"""LongCat n-gram hash ids (METHODS.md 2): table sizes, their validation, exact host-side hashing.

Table t (n-major: t = (n-2)*K + k for n = 2..N, k = 0..K-1) has M_t rows and hashes the n-gram
ending at position i:
  h_t(i) = (sum_{j<n} z_{i-j} * |V|^j) mod M_t
where z is the token id, with the special ids (pad, eos, bos) and every predecessor before the
start of the position's segment (one document piece of a packed row) replaced by 0. So history
stops at document boundaries, and no n-gram contains a special id.

Exactness: |V|^j mod M_t is computed first with Python ints; every product and partial sum is
reduced mod M_t; and M_t <= 2^30. Then numpy int64 never overflows ((M-1)^2 < 2^60), and the
int32 device version (models/ngram_hash.py, used when decoding) never exceeds 2^31 - 1.

The pipeline ships fused row ids, offset_t + h_t: indices into the one fused table
[sum M_t padded to ROW_ALIGN, d_sub] that the model holds.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from scone_jax.errors import UserError

MAX_TABLE_ROWS = 2 ** 30   # int32-safe device hashing (2 * (M - 1) < 2^31)
ROW_ALIGN = 1024           # the fused table's rows are padded to this, so any mesh of up to 1024
                           # table shards (powers of two) splits them evenly; pad rows are never read


@dataclasses.dataclass(frozen=True)
class NgramTableLayout:
  """The resolved tables of an experiment: sizes M_t (n-major) and what hashing needs."""
  vocab_size: int                   # |V|, the polynomial's base
  max_n: int                        # N
  tables_per_order: int             # K
  sizes: tuple[int, ...]            # M_t, t = 0..(N-1)K-1
  special_ids: tuple[int, ...] = ()  # hashed as 0 (pad, eos, bos)

  @property
  def num_tables(self) -> int:
    return len(self.sizes)

  @property
  def orders(self) -> tuple[int, ...]:
    """n of every table."""
    return tuple(2 + t // self.tables_per_order for t in range(self.num_tables))

  @property
  def offsets(self) -> np.ndarray:
    """int64 [T]: first row of every table in the fused table."""
    return np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(np.int64)

  @property
  def total_rows(self) -> int:
    """Rows of the fused table: sum M_t rounded up to ROW_ALIGN."""
    return -(-sum(self.sizes) // ROW_ALIGN) * ROW_ALIGN

  def powers(self) -> np.ndarray:
    """int64 [N, T]: |V|^j mod M_t where j < n_t, else 0 (the term is absent)."""
    out = np.zeros((self.max_n, self.num_tables), np.int64)
    for t, (n, m) in enumerate(zip(self.orders, self.sizes)):
      for j in range(n):
        out[j, t] = pow(self.vocab_size, j, m)
    return out


def released_sizes(ratio: float, vocab_size: int, num_tables: int) -> tuple[int, ...]:
  """The released model's rule: m + 2t + 1 for table t, m = round(ratio * |V|)."""
  m = int(round(ratio * vocab_size))
  return tuple(m + 2 * t + 1 for t in range(num_tables))


def check_sizes(sizes: tuple[int, ...], vocab_size: int, tolerance: float) -> None:
  """Refuses table sizes that make tables identical or collide structurally (UserError).

  - Equal sizes: two tables of one order with equal M are the same function of the n-gram.
  - Near a multiple c|V| (c >= 1): with M = c|V| + r, the trigrams (a, b, x) and (a, b + r, x + c)
    always collide (their hashes differ by r|V| + c|V|^2 = |V| M), and at r = 0 the bigrams (a, b)
    and (a, b + c) do too, so a frequent token's bigrams crowd into c rows. The partners end in
    the same token with neighbouring ids for every n-gram when |r| << |V|, so we refuse
    |r| <= tolerance * |V| (default 1%; tolerance 0 refuses exact multiples only). The released
    model's integral ratio 78 puts its sizes 1..23 rows above 78|V|: to reproduce it exactly, give
    NgramHashConfig.near_multiple_tolerance = 0.
  - Coverage: the bigrams ending in one token hash to x + (b|V| mod M), which reach only M / g
    rows for g = gcd(M, |V|); refused when that is fewer than min(|V|, M).
  """
  for t, m in enumerate(sizes):
    if not 2 <= m <= MAX_TABLE_ROWS:
      raise UserError(f"n-gram table {t} has {m} rows; sizes must be in 2..2^30 (int32-safe hashing): "
                      "fix NgramHashConfig.sizes or ratio")
    c = round(m / vocab_size)
    if c >= 1 and abs(m - c * vocab_size) <= tolerance * vocab_size:
      raise UserError(f"n-gram table {t} has {m} rows, within {tolerance:.2%} of {c} x |V| = {c * vocab_size}: "
                      "near-multiples of the vocabulary make structured collisions; change NgramHashConfig.ratio "
                      "(e.g. to a half-integer) or sizes")
    g = math.gcd(m, vocab_size)
    if g > 1 and m // g < vocab_size:
      raise UserError(f"n-gram table {t} has {m} rows, sharing the factor {g} with |V| = {vocab_size}: the bigrams "
                      f"ending in one token reach only {m // g} rows; pick sizes coprime to |V| (odd, for "
                      "a power-of-two vocabulary)")
  seen: dict[int, int] = {}
  for t, m in enumerate(sizes):
    if m in seen:
      raise UserError(f"n-gram tables {seen[m]} and {t} both have {m} rows: equal sizes make equal tables; "
                      "give distinct NgramHashConfig.sizes")
    seen[m] = t


def table_layout(cfg, vocab_size: int, special_ids: tuple[int, ...] = ()) -> NgramTableLayout:
  """Resolves NgramHashConfig against |V|: the sizes (given or by the released rule), checked."""
  n, k = cfg.max_n, cfg.tables_per_order
  if n < 2 or k < 1:
    raise UserError(f"NgramHashConfig.max_n={n} / tables_per_order={k} must be >= 2 / >= 1")
  num_tables = (n - 1) * k
  if cfg.sizes:
    sizes = tuple(int(s) for s in cfg.sizes)
    if len(sizes) != num_tables:
      raise UserError(f"NgramHashConfig.sizes has {len(sizes)} entries but max_n={n} and tables_per_order={k} "
                      f"make {num_tables} tables (n-major)")
  else:
    if cfg.ratio <= 0:
      raise UserError(f"NgramHashConfig.ratio={cfg.ratio} must be positive (or give sizes)")
    sizes = released_sizes(cfg.ratio, vocab_size, num_tables)
  if not 0 <= cfg.near_multiple_tolerance < 0.5:
    raise UserError(f"NgramHashConfig.near_multiple_tolerance={cfg.near_multiple_tolerance} must be in [0, 0.5)")
  check_sizes(sizes, vocab_size, cfg.near_multiple_tolerance)
  layout = NgramTableLayout(vocab_size, n, k, sizes, tuple(sorted(set(special_ids))))
  if layout.total_rows >= 2 ** 31:
    raise UserError(f"the n-gram tables hold {layout.total_rows:,} rows in all; fused row ids must fit int32 "
                    "(< 2^31): use smaller tables")
  return layout


def history(inputs_L: np.ndarray, segment_ids_L: np.ndarray, max_n: int,
            special_ids: tuple[int, ...] = ()) -> np.ndarray:
  """int64 [N, L]: row j holds z_{i-j} for every position i, 0 where i-j is before i's segment
  (or the row) starts; special ids are 0."""
  z = np.where(np.isin(inputs_L, special_ids), 0, inputs_L).astype(np.int64)
  seg = np.asarray(segment_ids_L)
  out = np.zeros((max_n,) + z.shape, np.int64)
  out[0] = z
  for j in range(1, min(max_n, z.shape[-1] + 1)):
    same = seg[j:] == seg[:-j]
    out[j, j:] = np.where(same, z[:-j], 0)
  return out


def hash_ids(layout: NgramTableLayout, history_Nx: np.ndarray) -> np.ndarray:
  """int64 [..., T]: h_t of the n-gram whose tokens are history[0] (current), history[1], ...

  history_Nx: int [N, ...] (as `history` returns, or a decode buffer newest-first)."""
  m = np.asarray(layout.sizes, np.int64)
  powers = layout.powers()
  h = np.zeros(history_Nx.shape[1:] + (layout.num_tables,), np.int64)
  for j in range(layout.max_n):
    z = history_Nx[j].astype(np.int64)[..., None] % m    # < M <= 2^30
    h = (h + z * powers[j] % m) % m                        # z * p < 2^60; sum < 2^31
  return h


def fused_rows(layout: NgramTableLayout, history_Nx: np.ndarray) -> np.ndarray:
  """int32 [..., T]: rows of the fused table (offset_t + h_t)."""
  return (hash_ids(layout, history_Nx) + layout.offsets).astype(np.int32)


class NgramRows:
  """Row feature for the grain pipeline: `ngram_rows` int32 [L, T], fused table rows of the
  n-grams ending at every position (never across segments)."""

  def __init__(self, layout: NgramTableLayout):
    self.layout = layout

  def __call__(self, row: dict) -> dict:
    hist = history(row["inputs"], row["segment_ids"], self.layout.max_n, self.layout.special_ids)
    return {**row, "ngram_rows": fused_rows(self.layout, hist)}
