"""Choosing the next token from logits: greedy, temperature, top-k and top-p (nucleus).

Order: divide by the temperature, keep the top_k largest logits, then keep the smallest set of
most likely tokens whose probability mass reaches top_p (the most likely token always stays);
sample from what is left. temperature 0 is greedy (argmax), whatever top_k / top_p say.
Ties at a cut-off are kept (a logit equal to the k-th largest stays).
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from scone_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Sampling:
  temperature: float = 0.0   # 0 = greedy
  top_k: int = 0             # 0 = no top-k cut
  top_p: float = 1.0         # 1 = no nucleus cut

  def validate(self) -> "Sampling":
    if not all(math.isfinite(x) for x in (self.temperature, self.top_p)):
      raise UserError(f"sampling settings {self} must be finite numbers")
    if self.temperature < 0:
      raise UserError(f"--temperature {self.temperature} must be >= 0 (0 = greedy)")
    if self.top_k < 0:
      raise UserError(f"--top_k {self.top_k} must be >= 0 (0 = off)")
    if not 0 < self.top_p <= 1:
      raise UserError(f"--top_p {self.top_p} must lie in (0, 1] (1 = off)")
    return self

  @property
  def greedy(self) -> bool:
    return self.temperature == 0


def filter_logits(logits_BxV: jax.Array, s: Sampling) -> jax.Array:
  """float32 [B, V]: the temperature-scaled logits, -inf outside the top-k / top-p set."""
  x = logits_BxV.astype(jnp.float32) / s.temperature
  if s.top_k and s.top_k < x.shape[-1]:
    kth = jax.lax.top_k(x, s.top_k)[0][:, -1:]
    x = jnp.where(x < kth, -jnp.inf, x)
  if s.top_p < 1.0:
    desc = -jnp.sort(-x, axis=-1)
    probs = jax.nn.softmax(desc, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    keep = mass_before < s.top_p   # the smallest prefix reaching top_p; its first entry always
    cutoff = jnp.min(jnp.where(keep, desc, jnp.inf), axis=-1, keepdims=True)
    x = jnp.where(x < cutoff, -jnp.inf, x)
  return x


def sample(logits_BxV: jax.Array, key: jax.Array, s: Sampling) -> jax.Array:
  """int32 [B]: the next token of every row."""
  if s.greedy:
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  return jax.random.categorical(key, filter_logits(logits_BxV, s), axis=-1).astype(jnp.int32)
