"""LongCat hashed n-gram embedding (METHODS.md 2): the input embedding of an `ngram_hash` model.

  e_i = (T[x_i] + sum_t W_t E_t[h_t(i)]) / (1 + T),   t over the (N-1)K tables,
optionally amplified (x sqrt(d), or a LayerNorm) before the first block.

Storage: the T sub-tables E_t [M_t, d_sub] are one fused table `ngram_tables` [R, d_sub]
(R = sum M_t padded, rows at scone_jax.data.ngram_ids offsets), sharded by rows through the
`table_rows` logical axis, without weight decay, and offloaded at inference; the projections W_t
are one weight `ngram_proj` [T, d_sub, d] applied by one einsum (resident: it runs on device).

Row ids come from the grain pipeline (`ngram_rows` [B, L, T], exact int64 hashing on the host).
When decoding, `decode_rows` hashes on device from the last N-1 ids of each sequence with int32
arithmetic that cannot overflow (M_t <= 2^30: every intermediate is < 2^31).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from scone_jax.config import ModelConfig, NgramHashConfig
from scone_jax.data.ngram_ids import NgramTableLayout
from scone_jax.errors import UserError
from scone_jax.models.layers import param
from scone_jax.parallel import constrain

AMPLIFICATIONS = ("none", "sqrt_d", "layernorm")


def sub_table_width(main: ModelConfig, ncfg: NgramHashConfig) -> int:
  """d_sub: NgramHashConfig.sub_dim, or d / ((N-1)K) (METHODS.md 2), which must divide."""
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
  scone_jax.data.ngram_ids.history), special ids not yet zeroed."""
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
    self.ngram_tables = param(rngs, nnx.initializers.normal(1.0), (layout.total_rows, d_sub),
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
      e = e * math.sqrt(e.shape[-1])
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
