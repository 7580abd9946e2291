"""The decode-time key/value cache: a registered pytree dataclass, donated to every step.

Slot s of a row holds the keys/values of that sequence's token at position s (positions start at
0 with BOS); `lengths[b]` slots of row b are filled, and the next token of row b goes to slot
lengths[b]. Rows of a batch may have different lengths: a query at position p attends slots
0..p of its row only, so what lies beyond (padding of a shorter prompt) is never read.

The cache runs through the same block stack as training (models/transformer.py, `cache=None`
there): each block writes its layer's keys/values at the new tokens' positions and attends over
its layer's slots. Its dimensions carry logical axes (CACHE_AXES, mapped by parallel.RULES), so a
decode mesh shards it like the activations it holds.
"""
from __future__ import annotations

import flax
import jax
import jax.numpy as jnp

from scone_jax.config import ModelConfig
from scone_jax.parallel import constrain

CACHE_AXES = ("layers", "batch", "cache_length", "act_kv_heads", "head_dim")


@flax.struct.dataclass
class KVCache:
  k: jax.Array        # [layers, B, max_len, kv_heads, head_dim], compute dtype
  v: jax.Array        # [layers, B, max_len, kv_heads, head_dim]
  lengths: jax.Array  # [B] int32: filled slots per row

  @classmethod
  def init(cls, cfg: ModelConfig, batch: int, max_len: int, device=None) -> "KVCache":
    shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.resolved_head_dim)
    dtype = jnp.dtype(cfg.dtype)
    cache = cls(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype), lengths=jnp.zeros((batch,), jnp.int32))
    return jax.device_put(cache, device) if device is not None else cache

  @property
  def max_len(self) -> int:
    return self.k.shape[2]

  @property
  def nbytes(self) -> int:
    return self.k.nbytes + self.v.nbytes

  def write(self, layer, k_BxLxKxH, v_BxLxKxH, positions_BxL) -> "KVCache":
    """The cache with layer `layer`'s slots at `positions` set to these keys/values (positions
    past max_len are dropped). layer: int, or an int32 scalar inside a scan over layers."""
    rows = jnp.arange(k_BxLxKxH.shape[0])[:, None]
    k = self.k.at[layer, rows, positions_BxL].set(k_BxLxKxH.astype(self.k.dtype), mode="drop")
    v = self.v.at[layer, rows, positions_BxL].set(v_BxLxKxH.astype(self.v.dtype), mode="drop")
    return self.replace(k=constrain(k, CACHE_AXES), v=constrain(v, CACHE_AXES))

  def layer(self, layer) -> tuple[jax.Array, jax.Array]:
    """(keys, values) [B, max_len, kv_heads, head_dim] of one layer."""
    return self.k[layer], self.v[layer]

  def mask(self, positions_BxL) -> jax.Array:
    """[B, 1, L, max_len] bool: a query at position p sees slots 0..p of its row (causal)."""
    slots = jnp.arange(self.max_len)
    return slots[None, None, None, :] <= positions_BxL[:, None, :, None]
