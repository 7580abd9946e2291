"""Models: the main decoder LM, the f-gram model A_f, and the embedding variants."""
from __future__ import annotations

from flax import nnx

from scone_jax.config import ModelConfig
from scone_jax.models.transformer import Transformer


def build_model(cfg: ModelConfig, seed: int) -> Transformer:
  """The model an experiment's gin config describes (embedding variants attach here)."""
  cfg.validate()
  return Transformer(cfg, nnx.Rngs(params=seed))
