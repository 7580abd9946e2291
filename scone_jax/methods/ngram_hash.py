"""LongCat hashed n-gram embedding (docs/METHODS.md 2): everything the `ngram_hash` method is.

  e_i = (T[x_i] + sum_t W_t E_t[h_t(i)]) / (1 + T),   t over the (N-1)K tables,
optionally amplified before the first block: `sqrt_d` scales e back to T's RMS at initialisation
(the paper's x sqrt(d) assumes its own init; ours: x sqrt(1 + T)), `layernorm` a LayerNorm.

Hash ids. Table t (n-major: t = (n-2)*K + k for n = 2..N, k = 0..K-1) has M_t rows and hashes
the n-gram ending at position i:
  h_t(i) = (sum_{j<n} z_{i-j} * |V|^j) mod M_t
where z is the token id, with the special ids (pad, eos, bos) and every predecessor before the
start of the position's segment (one document piece of a packed row) replaced by 0. So history
stops at document boundaries, and no n-gram contains a special id.
Exactness: |V|^j mod M_t is computed first with Python ints; every product and partial sum is
reduced mod M_t; and M_t <= 2^30. Then the host's numpy int64 never overflows ((M-1)^2 < 2^60)
(`hash_ids`, in the grain pipeline), and the device's int32 version (`hash_rows_device`, used
when decoding) never exceeds 2^31 - 1. Both live here and are tested against each other.

Storage: the T sub-tables E_t [M_t, d_sub] are one fused table `ngram_tables` [R, d_sub]
(R = sum M_t padded to ROW_ALIGN; fused row ids = offset_t + h_t), sharded by rows through the
`table_rows` logical axis, without weight decay, and offloaded at inference; the projections W_t
are one weight `ngram_proj` [T, d_sub, d] applied by one einsum (resident: it runs on device).
"""
from __future__ import annotations

import dataclasses
import math

import gin
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from scone_jax import config as C
from scone_jax.config import ModelConfig
from scone_jax.errors import UserError
from scone_jax.methods.base import Method
from scone_jax.models.layers import param
from scone_jax.models.transformer import TOKEN_INIT_STD
from scone_jax.parallel import constrain
from scone_jax.pending import Done

AMPLIFICATIONS = ("none", "sqrt_d", "layernorm")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class NgramHashConfig:
  """LongCat hashed n-gram embedding (docs/METHODS.md 2): orders 2..max_n, `tables_per_order` (K)
  tables each. Table sizes: `sizes` (n-major: (n=2,k=1), (n=2,k=2), ...) or, when empty, the
  released rule m + 2t + 1 for table t with m = round(ratio * |V|). Sizes are checked by
  table_layout (distinct; not within `near_multiple_tolerance` * |V| rows
  of a multiple of |V|; see there why)."""
  max_n: int = 3                  # N
  tables_per_order: int = 2       # K
  ratio: float = 4.5              # m = round(ratio * |V|); a half-integer keeps m + 2t + 1 far from multiples
  sizes: tuple = ()               # explicit M_{n,k}; overrides ratio
  sub_dim: int = 0                # width of every E_{n,k}; 0 = d / ((N-1)K) as docs/METHODS.md (our extension)
  amplification: str = "none"     # none | sqrt_d (restores T's RMS: amplification_factor) | layernorm
  near_multiple_tolerance: float = 0.01   # fraction of |V|; 0 refuses exact multiples only

TABLE_INIT_STD = 1.0       # E_t's rows at initialisation, like T's
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


def sub_table_width(main: ModelConfig, ncfg: NgramHashConfig) -> int:
  """d_sub: NgramHashConfig.sub_dim, or d / ((N-1)K) (docs/METHODS.md 2), which must divide."""
  if ncfg.sub_dim:
    return ncfg.sub_dim
  tables = (ncfg.max_n - 1) * ncfg.tables_per_order
  if main.d_model % tables:
    raise UserError(f"ModelConfig.d_model={main.d_model} is not divisible by the {tables} n-gram tables "
                    f"((max_n-1) x tables_per_order); change them or set NgramHashConfig.sub_dim")
  return main.d_model // tables


def _mulmod(a, p_T: np.ndarray, m_T: np.ndarray):
  """(a * p) mod m in int32 by double-and-add over the bits of the constants p (< m <= 2^30):
  every intermediate is < 2m <= 2^31, so nothing overflows. a: int32 [..., T] with 0 <= a < m."""
  m = jnp.asarray(m_T, jnp.int32)
  r = jnp.zeros_like(a)
  top = int(max(int(p).bit_length() for p in p_T))
  for b in reversed(range(top)):
    r = r * 2
    r = jnp.where(r >= m, r - m, r)
    bit = jnp.asarray((p_T >> b) & 1, bool)
    r = jnp.where(bit, r + a, r)
    r = jnp.where(r >= m, r - m, r)
  return r


def hash_rows_device(layout: NgramTableLayout, history_Nx) -> jax.Array:
  """Fused table rows int32 [..., T] on device; history_Nx int32 [N, ...] newest first (as the host's
  `history`), special ids not yet zeroed."""
  z = jnp.asarray(history_Nx, jnp.int32)
  if layout.special_ids:
    z = jnp.where(jnp.isin(z, jnp.asarray(layout.special_ids, jnp.int32)), 0, z)
  m = np.asarray(layout.sizes, np.int64)
  powers = layout.powers()
  h = jnp.zeros(z.shape[1:] + (layout.num_tables,), jnp.int32)
  for j in range(layout.max_n):
    zj = jnp.remainder(z[j][..., None], jnp.asarray(m, jnp.int32))
    h = h + _mulmod(zj, powers[j], m)
    h = jnp.where(h >= m, h - jnp.asarray(m, jnp.int32), h)
  return h + jnp.asarray(layout.offsets, jnp.int32)


def amplification_factor(num_tables: int) -> float:
  """`sqrt_d`'s scale: what brings the average of 1 + J independent terms back to the RMS of a
  row of T at initialisation (docs/METHODS.md 2). T's rows have RMS TOKEN_INIT_STD; each W_t E_t
  row has RMS TABLE_INIT_STD (LeCun W_t keeps the scale of its input); their mean has RMS
  sqrt(T^2 + J P^2) / (1 + J). With our init (1 and 1) the factor is sqrt(1 + J); the paper's
  sqrt(d) is right only for its own initialisation (at d = 2048, J = 12 it gives 12.6x T's RMS)."""
  t, p = TOKEN_INIT_STD, TABLE_INIT_STD
  return t * (1 + num_tables) / math.sqrt(t * t + num_tables * p * p)


class NgramHashEmbedding(nnx.Module):
  """The input embedding of an `ngram_hash` model (set as model.input_embedding)."""

  def __init__(self, main: ModelConfig, ncfg: NgramHashConfig, layout: NgramTableLayout, rngs: nnx.Rngs):
    if ncfg.amplification not in AMPLIFICATIONS:
      raise UserError(f"NgramHashConfig.amplification={ncfg.amplification!r} is not one of {', '.join(AMPLIFICATIONS)}")
    d, t = main.d_model, layout.num_tables
    d_sub = sub_table_width(main, ncfg)
    self.layout, self.amplification, self.eps = layout, ncfg.amplification, main.norm_eps
    self.dtype = jnp.dtype(main.dtype)
    # Every term of the average starts at unit scale, like T's rows: E ~ N(0, 1), W_t ~ 1/sqrt(d_sub).
    self.ngram_tables = param(rngs, nnx.initializers.normal(TABLE_INIT_STD), (layout.total_rows, d_sub),
                              ("table_rows", "table_dim"), decay=False)
    self.ngram_proj = param(rngs, nnx.initializers.lecun_normal(in_axis=-2, out_axis=-1, batch_axis=(0,)),
                            (t, d_sub, d), (None, "table_dim", "embed"))
    self.amp_scale = nnx.data(None)
    self.amp_bias = nnx.data(None)
    if self.amplification == "layernorm":
      self.amp_scale = param(rngs, nnx.initializers.ones, (d,), ("norm",), decay=False)
      self.amp_bias = param(rngs, nnx.initializers.zeros, (d,), ("norm",), decay=False)

  def combine(self, token_emb_BxLxD, rows_BxLxT):
    """The averaged (and amplified) embedding [B, L, D] from T[x] and the fused rows [B, L, T]."""
    dt = token_emb_BxLxD.dtype
    table = constrain(self.ngram_tables[...], ("table_rows", None))
    sub = jnp.take(table, rows_BxLxT, axis=0).astype(dt)            # [B, L, T, d_sub]
    sub = constrain(sub, ("batch", "length", None, None))
    proj = jnp.einsum("bltk,tkd->bld", sub, self.ngram_proj[...].astype(dt))
    e = (token_emb_BxLxD + proj) / (1 + self.layout.num_tables)
    if self.amplification == "sqrt_d":
      e = e * amplification_factor(self.layout.num_tables)
    elif self.amplification == "layernorm":
      x = e.astype(jnp.float32)
      mean = jnp.mean(x, axis=-1, keepdims=True)
      var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
      e = ((x - mean) * jax.lax.rsqrt(var + self.eps) * self.amp_scale[...] + self.amp_bias[...]).astype(dt)
    return constrain(e, ("batch", "length", "act_embed"))

  def __call__(self, model, batch):
    return self.combine(model.embed_tokens(batch["inputs"]), batch["ngram_rows"])

  def decode_rows(self, recent_BxNm1, tokens_B):
    """One decode step's rows and the new history. recent: int32 [B, N-1], the last N-1 ids of
    each sequence, oldest first (0 = none yet: a new document starts from zeros); tokens: [B].
    Returns (fused rows int32 [B, T], recent ids [B, N-1])."""
    window = jnp.concatenate([recent_BxNm1, tokens_B[:, None]], axis=1)   # [B, N], oldest first
    rows = hash_rows_device(self.layout, window[:, ::-1].T)              # newest first: [N, B]
    return rows, window[:, 1:]


class NgramFeatures:
  """Decode features: the hashed table rows of new tokens (`ngram_rows` [B, L, T]), from the last
  N tokens of each sequence; a prompt is one document (history stops at its start)."""

  def __init__(self, layout: NgramTableLayout):
    self.layout = layout
    self.history_len = layout.max_n   # the new token and its N-1 predecessors

  def prompt(self, inputs_BxL: np.ndarray, valid_BxL: np.ndarray):
    rows = NgramRows(self.layout)
    out = [rows({"inputs": x, "segment_ids": v.astype(np.int32)})["ngram_rows"]
           for x, v in zip(np.asarray(inputs_BxL), np.asarray(valid_BxL))]
    return Done({"ngram_rows": np.stack(out)})

  def step(self, history_BxH: np.ndarray):
    """history [B, N]: newest last, -1 before the document start."""
    h = np.asarray(history_BxH, np.int64)
    z = np.where((h < 0) | np.isin(h, self.layout.special_ids), 0, h)
    return Done({"ngram_rows": fused_rows(self.layout, z[:, ::-1].T)[:, None]})


@dataclasses.dataclass
class NgramHash(Method):
  ngram: NgramHashConfig = None
  layout: NgramTableLayout = None   # the resolved table sizes

  name = "ngram_hash"
  description = "a LongCat n-gram hash run"
  offloaded = ("ngram_tables",)
  served_offloaded = False   # generate hashes and reads the tables on the device (a host path: issue 14)

  @classmethod
  def resolve(cls, model, data, meta, *, planned=False):
    ncfg = C.build(NgramHashConfig)
    sub_table_width(model, ncfg)   # refuses a width that does not divide before anything is built
    # The polynomial's base is the model's vocabulary; pad, eos and bos never enter an n-gram.
    layout = table_layout(ncfg, model.vocab_size, (meta.pad_id, meta.eos_id, meta.bos_id))
    return cls(model, data, ncfg, layout)

  def input_embedding(self):
    return lambda rngs: NgramHashEmbedding(self.model, self.ngram, self.layout, rngs)

  def row_features(self):
    return (NgramRows(self.layout),)

  def decode_features(self, store=None):
    if store is not None:
      raise self.no_store_error()
    return NgramFeatures(self.layout)

  def extra_flops(self):
    """The projections W_t (2 T d_sub d per token); the table gathers are free."""
    return 2.0 * self.layout.num_tables * sub_table_width(self.model, self.ngram) * self.model.d_model
