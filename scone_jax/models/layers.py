"""Decoder building blocks (Flax NNX): RMSNorm / LayerNorm, RoPE, grouped-query attention, the
SwiGLU or GELU MLP, Block. ModelConfig's mlp, norm, bias and positions pick the block's form: the
defaults are Llama-style, mlp='gelu' + norm='layer' + bias + positions='learned' is GPT-2's block
(positions='learned' only drops RoPE here: the table itself is the Transformer's).

Dimension letters in names: B batch, L length (queries), S length (keys), D model width,
N query heads, K key/value heads, H head width, F FFN width, V vocabulary.
Parameters are float32 and carry `logical_axes` (one name per dimension, mapped to mesh axes by
scone_jax.parallel.RULES) and `weight_decay` metadata (matrices decay; norm parameters and
biases do not, as nanoGPT and the Hugging Face trainer treat GPT-2's). A bias is sharded like its
matrix's output axes. A module built with `stack=n` holds every parameter with a leading layer
axis of size n, for jax.lax.scan over layers.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from scone_jax.config import ModelConfig
from scone_jax.parallel import constrain


@dataclasses.dataclass(frozen=True)
class AxisNames:
  """The logical parameter axes a block uses; the f-gram model uses its own set."""
  embed: str = "embed"
  heads: str = "q_heads"
  kv_heads: str = "kv_heads"
  mlp: str = "mlp"
  layers: str = "layers"


MAIN_AXES = AxisNames()
FGRAM_AXES = AxisNames("fgram_embed", "fgram_heads", "fgram_kv_heads", "fgram_mlp", "fgram_layers")


def param(rngs: nnx.Rngs, init, shape: tuple[int, ...], axes: tuple[str | None, ...], *,
          stack: int = 0, stack_axis: str = "layers", decay: bool = True) -> nnx.Param:
  if stack:
    shape, axes = (stack, *shape), (stack_axis, *axes)
  return nnx.Param(init(rngs.params(), shape, jnp.float32), logical_axes=axes, weight_decay=decay)


def zeros_param(rngs: nnx.Rngs, shape: tuple[int, ...], axes: tuple[str | None, ...], *, stack: int = 0,
                stack_axis: str = "layers") -> nnx.Param:
  """A bias: zeros, no weight decay."""
  return param(rngs, nnx.initializers.zeros, shape, axes, stack=stack, stack_axis=stack_axis, decay=False)


def _bias(x, b, dtype):
  return x if b is None else x + b[...].astype(dtype)


def rms_norm(x, scale, eps: float):
  x32 = x.astype(jnp.float32)
  y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  return (y * scale).astype(x.dtype)


class RMSNorm(nnx.Module):
  def __init__(self, dim: int, eps: float, rngs: nnx.Rngs, *, axis: str = "norm", stack: int = 0,
               stack_axis: str = "layers"):
    self.eps = eps
    self.scale = param(rngs, nnx.initializers.ones, (dim,), (axis,), stack=stack, stack_axis=stack_axis, decay=False)

  def __call__(self, x):
    return rms_norm(x, self.scale[...], self.eps)


def layer_norm(x, scale, bias, eps: float):
  x32 = x.astype(jnp.float32)
  centred = x32 - jnp.mean(x32, axis=-1, keepdims=True)
  y = centred * jax.lax.rsqrt(jnp.mean(centred * centred, axis=-1, keepdims=True) + eps)
  return (y * scale + bias).astype(x.dtype)


class LayerNorm(nnx.Module):
  """LayerNorm with a learned scale (init 1) and bias (init 0), computed in float32 (GPT-2)."""

  def __init__(self, dim: int, eps: float, rngs: nnx.Rngs, *, axis: str = "norm", stack: int = 0,
               stack_axis: str = "layers"):
    self.eps = eps
    kw = dict(stack=stack, stack_axis=stack_axis, decay=False)
    self.scale = param(rngs, nnx.initializers.ones, (dim,), (axis,), **kw)
    self.bias = param(rngs, nnx.initializers.zeros, (dim,), (axis,), **kw)

  def __call__(self, x):
    return layer_norm(x, self.scale[...], self.bias[...], self.eps)


def make_norm(cfg: ModelConfig, dim: int, rngs: nnx.Rngs, **kw) -> nnx.Module:
  """The norm of cfg's block design (ModelConfig.norm): RMSNorm or LayerNorm."""
  return (LayerNorm if cfg.norm == "layer" else RMSNorm)(dim, cfg.norm_eps, rngs, **kw)


def rope(x_BxLxNxH, positions_BxL, theta: float):
  """Rotary position embedding (rotate-half form), computed from positions: no length limit."""
  h = x_BxLxNxH.shape[-1]
  freq = theta ** (-jnp.arange(0, h // 2, dtype=jnp.float32) * 2.0 / h)
  angle_BxLxH2 = positions_BxL.astype(jnp.float32)[..., None] * freq
  sin, cos = jnp.sin(angle_BxLxH2)[:, :, None, :], jnp.cos(angle_BxLxH2)[:, :, None, :]
  x1, x2 = jnp.split(x_BxLxNxH.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BxLxNxH.dtype)


def attention_mask(q_segment_BxL, k_segment_BxS, q_pos_BxL, k_pos_BxS):
  """[B, 1, L, S] bool: same segment and causal (by position within the segment)."""
  same = q_segment_BxL[:, :, None] == k_segment_BxS[:, None, :]
  causal = q_pos_BxL[:, :, None] >= k_pos_BxS[:, None, :]
  return (same & causal)[:, None]


class Attention(nnx.Module):
  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, *, names: AxisNames = MAIN_AXES, stack: int = 0,
               d_model: int | None = None):
    d, n, k, h = d_model or cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.resolved_head_dim
    init = nnx.initializers.normal(cfg.init_std)
    out_init = nnx.initializers.normal(cfg.init_std / math.sqrt(2 * max(cfg.num_layers, 1)))
    kw = dict(stack=stack, stack_axis=names.layers)
    self.wq = param(rngs, init, (d, n, h), (names.embed, names.heads, "head_dim"), **kw)
    self.wk = param(rngs, init, (d, k, h), (names.embed, names.kv_heads, "head_dim"), **kw)
    self.wv = param(rngs, init, (d, k, h), (names.embed, names.kv_heads, "head_dim"), **kw)
    self.wo = param(rngs, out_init, (n, h, d), (names.heads, "head_dim", names.embed), **kw)
    self.bq = self.bk = self.bv = self.bo = nnx.data(None)
    if cfg.bias:
      self.bq = zeros_param(rngs, (n, h), (names.heads, "head_dim"), **kw)
      self.bk = zeros_param(rngs, (k, h), (names.kv_heads, "head_dim"), **kw)
      self.bv = zeros_param(rngs, (k, h), (names.kv_heads, "head_dim"), **kw)
      self.bo = zeros_param(rngs, (d,), (names.embed,), **kw)
    self.rope = cfg.positions == "rope"   # else the positions come from the model's learned table
    self.theta = cfg.rope_theta
    self.dtype = jnp.dtype(cfg.dtype)

  def qkv(self, x_BxLxD, positions_BxL):
    dt = self.dtype
    q = _bias(jnp.einsum("bld,dnh->blnh", x_BxLxD, self.wq[...].astype(dt)), self.bq, dt)
    k = _bias(jnp.einsum("bld,dkh->blkh", x_BxLxD, self.wk[...].astype(dt)), self.bk, dt)
    v = _bias(jnp.einsum("bld,dkh->blkh", x_BxLxD, self.wv[...].astype(dt)), self.bv, dt)
    if self.rope:
      q, k = rope(q, positions_BxL, self.theta), rope(k, positions_BxL, self.theta)
    q = constrain(q, ("batch", "length", "act_heads", None))
    k = constrain(k, ("batch", "length", "act_kv_heads", None))
    return q, k, v

  def attend(self, q_BxLxNxH, k_BxSxKxH, v_BxSxKxH, mask_Bx1xLxS):
    out = jax.nn.dot_product_attention(q_BxLxNxH, k_BxSxKxH, v_BxSxKxH, mask=mask_Bx1xLxS)
    return _bias(jnp.einsum("blnh,nhd->bld", out, self.wo[...].astype(self.dtype)), self.bo, self.dtype)

  def __call__(self, x_BxLxD, positions_BxL, segment_ids_BxL, cache=None, layer=None):
    """Training (cache None): attention within segments, causal by position; segment_ids may
    instead be a bool mask [B, 1, L, L] (A_f's prefix-tree rows, fgram/packing.tree_mask).
    Decoding: the new tokens' keys/values go into `cache` layer `layer` (models/kv_cache.py) and
    the queries attend over that layer's slots. Returns (output [B, L, D], the cache or None)."""
    q, k, v = self.qkv(x_BxLxD, positions_BxL)
    if cache is None:
      mask = segment_ids_BxL if segment_ids_BxL.ndim == 4 else attention_mask(
          segment_ids_BxL, segment_ids_BxL, positions_BxL, positions_BxL)
      return self.attend(q, k, v, mask), None
    cache = cache.write(layer, k, v, positions_BxL)
    keys, values = cache.layer(layer)
    return self.attend(q, keys, values, cache.mask(positions_BxL)), cache


class MLP(nnx.Module):
  """SwiGLU: W_down(SiLU(W_gate x) * W_up x), or (ModelConfig.mlp='gelu', GPT-2) two matrices:
  W_down(GELU(W_up x)), GELU in its tanh approximation; with ModelConfig.bias each matrix has a
  bias. With up_proj=False the up-projection is not a parameter here: the caller gives it
  (STEM: a token-indexed table row)."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, *, names: AxisNames = MAIN_AXES, stack: int = 0,
               d_model: int | None = None, up_proj: bool = True):
    d, f = d_model or cfg.d_model, cfg.d_ff
    init = nnx.initializers.normal(cfg.init_std)
    out_init = nnx.initializers.normal(cfg.init_std / math.sqrt(2 * max(cfg.num_layers, 1)))
    kw = dict(stack=stack, stack_axis=names.layers)
    self.gated = cfg.mlp == "swiglu"
    self.w_gate = param(rngs, init, (d, f), (names.embed, names.mlp), **kw) if self.gated else nnx.data(None)
    self.w_up = param(rngs, init, (d, f), (names.embed, names.mlp), **kw) if up_proj else nnx.data(None)
    self.w_down = param(rngs, out_init, (f, d), (names.mlp, names.embed), **kw)
    self.b_gate = self.b_up = self.b_down = nnx.data(None)
    if cfg.bias:
      if self.gated:
        self.b_gate = zeros_param(rngs, (f,), (names.mlp,), **kw)
      if up_proj:
        self.b_up = zeros_param(rngs, (f,), (names.mlp,), **kw)
      self.b_down = zeros_param(rngs, (d,), (names.embed,), **kw)
    self.dtype = jnp.dtype(cfg.dtype)

  def up(self, x_BxLxD):
    return _bias(jnp.einsum("bld,df->blf", x_BxLxD, self.w_up[...].astype(self.dtype)), self.b_up, self.dtype)

  def __call__(self, x_BxLxD, up_BxLxF=None):
    dt = self.dtype
    up = self.up(x_BxLxD) if up_BxLxF is None else up_BxLxF
    if self.gated:
      gate = jax.nn.silu(_bias(jnp.einsum("bld,df->blf", x_BxLxD, self.w_gate[...].astype(dt)), self.b_gate, dt))
      h = gate * up
    else:
      h = jax.nn.gelu(up, approximate=True)
    h = constrain(h, ("batch", "length", "act_mlp"))
    return _bias(jnp.einsum("blf,fd->bld", h, self.w_down[...].astype(dt)), self.b_down, dt)


class Block(nnx.Module):
  """Pre-norm decoder block: x + Attn(norm(x)); x + MLP(norm(x))."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, *, names: AxisNames = MAIN_AXES, stack: int = 0,
               d_model: int | None = None, up_proj: bool = True):
    d = d_model or cfg.d_model
    kw = dict(names=names, stack=stack, d_model=d)
    self.attn_norm = make_norm(cfg, d, rngs, stack=stack, stack_axis=names.layers)
    self.attn = Attention(cfg, rngs, **kw)
    self.mlp_norm = make_norm(cfg, d, rngs, stack=stack, stack_axis=names.layers)
    self.mlp = MLP(cfg, rngs, up_proj=up_proj, **kw)

  def __call__(self, x_BxLxD, positions_BxL, segment_ids_BxL, up_fn=None, cache=None, layer=None):
    """up_fn: normed input [B, L, D] -> the MLP's up-projection [B, L, F], for blocks built with
    up_proj=False (STEM); None = the block's own W_up. cache/layer: decoding (Attention).
    Returns (output [B, L, D], the cache or None)."""
    attn, cache = self.attn(self.attn_norm(x_BxLxD), positions_BxL, segment_ids_BxL, cache, layer)
    x = x_BxLxD + attn
    h = self.mlp_norm(x)
    x = x + self.mlp(h, None if up_fn is None else up_fn(h))
    return constrain(x, ("batch", "length", "act_embed")), cache
