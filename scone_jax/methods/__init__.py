"""Embedding methods, one module each, and the registry that maps `ModelConfig.embedding` to one.

  token       the baseline, e = T[x]                              (methods/token.py)
  scone       SCONE f-gram embeddings from A_f, offloaded table   (methods/scone.py)
  ngram_hash  LongCat hashed n-gram tables averaged into e        (methods/ngram_hash.py)
  stem        STEM token-indexed FFN up-projection                (methods/stem.py)
The interface is methods/base.py. A new method is one module here, one entry in REGISTRY, one gin
overlay in experiments/methods/ and one test (WORKSPACE.md, "How to add an embedding method").
"""
from __future__ import annotations

from scone_jax.config import DataConfig, ModelConfig
from scone_jax.data.shards import DataMeta
from scone_jax.errors import UserError
from scone_jax.methods.base import Method
from scone_jax.methods.ngram_hash import NgramHash
from scone_jax.methods.scone import Scone
from scone_jax.methods.stem import Stem
from scone_jax.methods.token import Token

REGISTRY: dict[str, type[Method]] = {m.name: m for m in (Token, Scone, NgramHash, Stem)}


def resolve(model: ModelConfig, data: DataConfig, meta: DataMeta, *, planned: bool = False) -> Method:
  """The method `model.embedding` names, resolved against the data (planned: no data here)."""
  cls = REGISTRY.get(model.embedding)
  if cls is None:
    raise UserError(f"ModelConfig.embedding={model.embedding!r} is not one of {', '.join(REGISTRY)}")
  return cls.resolve(model, data, meta, planned=planned)


__all__ = ["REGISTRY", "Method", "NgramHash", "Scone", "Stem", "Token", "resolve"]
