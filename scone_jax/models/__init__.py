"""Models: the main decoder LM, the f-gram model A_f, and the embedding variants."""
from __future__ import annotations

from flax import nnx

from scone_jax.config import FgramConfig, ModelConfig
from scone_jax.models.transformer import Transformer


def build_model(cfg: ModelConfig, seed: int, *, fgram: FgramConfig | None = None, max_n: int = 0) -> Transformer:
  """The model an experiment's gin config describes; embedding variants attach here."""
  cfg.validate()
  rngs = nnx.Rngs(params=seed)
  model = Transformer(cfg, rngs)
  if cfg.embedding == "scone":
    from scone_jax.models.scone import SconeEmbedding
    assert fgram is not None and max_n >= 2
    model.input_embedding = nnx.data(SconeEmbedding(cfg, fgram, max_n, rngs))
  return model
