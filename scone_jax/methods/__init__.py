"""Embedding methods, one module each, and the registry that maps `ModelConfig.embedding` to one.

  token       the baseline, e = T[x]                              (methods/token.py)
  scone       SCONE f-gram embeddings from A_f, offloaded table   (methods/scone.py)
  ngram_hash  LongCat hashed n-gram tables averaged into e        (methods/ngram_hash.py)
  stem        STEM token-indexed FFN up-projection                (methods/stem.py)
The interface is methods/base.py. Every module of this package is imported here and every
`Method` subclass with a `name` is registered, so a new method is one module in this package,
one gin overlay in experiments/methods/ and one test (WORKSPACE.md, "How to add an embedding
method"): nothing else is edited.
"""
from __future__ import annotations

import importlib
import pkgutil

from scone_jax.config import DataConfig, ModelConfig
from scone_jax.data.shards import DataMeta
from scone_jax.errors import UserError
from scone_jax.methods.base import Method


def _registry() -> dict[str, type[Method]]:
  for module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{module.name}")   # registers its gin configurables too
  found: dict[str, type[Method]] = {}
  pending = list(Method.__subclasses__())
  while pending:
    cls = pending.pop()
    pending.extend(cls.__subclasses__())
    if cls.name:
      assert found.setdefault(cls.name, cls) is cls, f"two methods named {cls.name!r}"
  return dict(sorted(found.items()))


REGISTRY: dict[str, type[Method]] = _registry()


def resolve(model: ModelConfig, data: DataConfig, meta: DataMeta, *, planned: bool = False) -> Method:
  """The method `model.embedding` names, resolved against the data (planned: no data here)."""
  cls = REGISTRY.get(model.embedding)
  if cls is None:
    raise UserError(f"ModelConfig.embedding={model.embedding!r} is not one of {', '.join(REGISTRY)}")
  return cls.resolve(model, data, meta, planned=planned)


__all__ = ["REGISTRY", "Method", "resolve"]
