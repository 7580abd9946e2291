"""Models: the main decoder LM, the f-gram model A_f, and the embedding variants."""
from __future__ import annotations

from flax import nnx

from scone_jax.config import FgramConfig, ModelConfig, NgramHashConfig, StemConfig
from scone_jax.models.transformer import Transformer


def build_model(cfg: ModelConfig, seed: int, *, fgram: FgramConfig | None = None, max_n: int = 0,
                ngram: NgramHashConfig | None = None, ngram_layout=None,
                stem_layers: tuple[int, ...] = ()) -> Transformer:
  """The model an experiment's gin config describes; embedding variants attach here.

  ngram_layout: scone_jax.data.ngram_ids.NgramTableLayout (the resolved table sizes);
  stem_layers: the STEM layers (scone_jax.models.stem.stem_layers)."""
  cfg.validate()
  rngs = nnx.Rngs(params=seed)
  decoder = None
  if cfg.embedding == "stem":
    from scone_jax.models.stem import StemBlockStack
    assert stem_layers, "a STEM model needs its layers"
    decoder = StemBlockStack(cfg, tuple(stem_layers), rngs)
  model = Transformer(cfg, rngs, decoder=decoder)
  if cfg.embedding == "scone":
    from scone_jax.models.scone import SconeEmbedding
    assert fgram is not None and max_n >= 2
    model.input_embedding = nnx.data(SconeEmbedding(cfg, fgram, max_n, rngs))
  elif cfg.embedding == "ngram_hash":
    from scone_jax.models.ngram_hash import NgramHashEmbedding
    assert ngram is not None and ngram_layout is not None
    model.input_embedding = nnx.data(NgramHashEmbedding(cfg, ngram, ngram_layout, rngs))
  return model
