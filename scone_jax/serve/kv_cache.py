"""The decode-time key/value cache: a registered pytree dataclass, donated to every step.

Slot s of a row holds the keys/values of that sequence's token at position s (positions start at
0 with BOS); `lengths[b]` slots of row b are filled, and the next token of row b goes to slot
lengths[b]. Rows of a batch may have different lengths: a query at position p attends slots
0..p of its row only, so what lies beyond (padding of a shorter prompt) is never read.
"""
from __future__ import annotations

import flax
import jax
import jax.numpy as jnp

from scone_jax.config import ModelConfig


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
