"""An experiment: the configs gin describes, resolved against the data, and what they build.

Embedding methods hook in here: a method adds modules to the model and per-row / per-batch
features to the input pipeline (SCONE: f-gram matches and the batch's distinct f-grams).
"""
from __future__ import annotations

import dataclasses
import os

import gin

from scone_jax import config as C
from scone_jax.data import shards
from scone_jax.errors import UserError


@dataclasses.dataclass
class Experiment:
  model: C.ModelConfig
  data: C.DataConfig
  train: C.TrainConfig
  mesh: C.MeshConfig
  data_meta: shards.DataMeta

  def build_model(self):
    from scone_jax.models import build_model
    return build_model(self.model, self.train.seed)

  def row_features(self) -> tuple:
    return ()

  def batch_features(self) -> tuple:
    return ()


def load(gin_files: list[str], bindings: list[str], *, data_dir: str | None = None) -> Experiment:
  """Parses gin, builds every config, and fills in what comes from the data (vocabulary size)."""
  C.parse_gin(gin_files, bindings)
  data = C.build(C.DataConfig)
  if data_dir:
    data = dataclasses.replace(data, data_dir=data_dir)
  if not data.data_dir:
    raise UserError("no data directory: set DATA_DIR (e.g. --gin.DATA_DIR=\"'/path/to/data'\")")
  meta = shards.load_meta(data.data_dir)
  model = C.build(C.ModelConfig)
  if model.vocab_size == 0:
    model = dataclasses.replace(model, vocab_size=meta.vocab_size)
  elif model.vocab_size < meta.vocab_size:
    raise UserError(f"ModelConfig.vocab_size={model.vocab_size} is smaller than the data's vocabulary "
                    f"({meta.vocab_size}, {data.data_dir}/meta.json)")
  model.validate()
  train = C.build(C.TrainConfig)
  mesh = C.build(C.MeshConfig)
  if data.seq_len > model.max_seq_len:
    raise UserError(f"DataConfig.seq_len={data.seq_len} is longer than the model supports "
                    f"(ModelConfig.max_seq_len={model.max_seq_len})")
  if data.seq_len < 2 or data.batch_size < 1:
    raise UserError(f"DataConfig.seq_len={data.seq_len} / batch_size={data.batch_size} must be >= 2 / >= 1")
  if train.steps < 1:
    raise UserError(f"TrainConfig.steps={train.steps} must be at least 1")
  return Experiment(model, data, train, mesh, meta)


def save_operative_config(workdir: str) -> None:
  """RUN/config.gin: the bindings this run actually used (gin's operative config)."""
  import jax
  if jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  tmp = os.path.join(workdir, "config.gin.tmp")
  with open(tmp, "w") as f:
    f.write(gin.operative_config_str())
  os.replace(tmp, os.path.join(workdir, "config.gin"))
