"""The baseline: the input embedding is the token table alone, e_i = T[x_i] (docs/METHODS.md 0)."""
from __future__ import annotations

from scone_jax.methods.base import Method


class Token(Method):
  name = "token"
  description = "a baseline run (no f-grams)"
