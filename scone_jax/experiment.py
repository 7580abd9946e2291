"""An experiment: the configs gin describes, resolved against the data, and what they build.

`load` parses gin and resolves the embedding method once (scone_jax.methods); everything that
depends on the method asks `exp.method`: the model it builds, the pipeline's row and batch
features, the decode features, the accounting.
"""
from __future__ import annotations

import dataclasses
import os

import gin
import jax

from scone_jax import config as C, methods, paths
from scone_jax.data import pipeline, shards
from scone_jax.errors import UserError
from scone_jax.files import atomic_write_text
from scone_jax.methods.base import Method
from scone_jax.models import accounting


@dataclasses.dataclass
class Experiment:
  model: C.ModelConfig
  data: C.DataConfig
  train: C.TrainConfig
  mesh: C.MeshConfig
  data_meta: shards.DataMeta
  method: Method

  def build_model(self):
    return self.method.build_model(self.train.seed)

  def pipeline_spec(self, split: str = "train", *, batch_devices: int = 1, store=None,
                    data_dir: str | None = None, prefetch: int | None = None) -> pipeline.PipelineSpec:
    """The grain pipeline of this process: train (shuffled, repeated, prefetched) or one ordered
    pass of an evaluation split (eval batch size); with the method's row and batch features.
    store: an opened table of precomputed rows in place of training-only modules (eval --store);
    prefetch: batches prepared ahead on a thread (default: DataConfig.prefetch for train, 0 else)."""
    d = self.data
    train = split == "train"
    rows = d.batch_size if train else (d.eval_batch_size or d.batch_size)
    process, processes = jax.process_index(), jax.process_count()
    # The method's sidecar (SCONE's TAGS) belongs to the run's own DATA: other data is matched here.
    tagged = data_dir is None or os.path.abspath(data_dir) == os.path.abspath(d.data_dir)
    spec = pipeline.PipelineSpec(
        data_dir or d.data_dir, split, d.seq_len, rows, seed=d.shuffle_seed if train else 0,
        process_index=process, process_count=processes,
        prefetch=(d.prefetch if train else 0) if prefetch is None else prefetch, shuffle=train,
        row_features=self.method.row_features(), document_features=self.method.document_features(tagged),
        sidecar=self.method.sidecar() if tagged else None)
    features = self.method.batch_features(process, batch_devices, rows // processes, store=store,
                                          sample=lambda n: pipeline.first_batches(spec, n))
    return dataclasses.replace(spec, batch_features=features)

  def identity(self) -> dict[str, str]:
    """What a run of this experiment is trained on (train/identity.py): the data, its tokenizer
    and the method's own inputs."""
    return {"data_fingerprint": shards.data_fingerprint(self.data.data_dir),
            "tokenizer_sha256": self.data_meta.tokenizer_sha256, **self.method.identity()}

  def identity_sources(self) -> dict[str, str]:
    return {"data_fingerprint": self.data.data_dir, "tokenizer_sha256": f"{self.data.data_dir}/meta.json",
            **self.method.identity_sources()}

  def input_dirs(self) -> dict[str, str]:
    """What a run of this experiment reads (name -> directory): its outputs stay out of them."""
    return {"DATA_DIR": self.data.data_dir, **self.method.input_dirs()}

  def accounting(self, abstract_params, process_count: int = 1, batch_devices: int = 1) -> accounting.Accounting:
    """The three parameter numbers and FLOPs per token (docs/METHODS.md 4)."""
    m = self.method
    return accounting.account(self.model, abstract_params, self.data.seq_len, training_only=m.training_only,
                              offloaded=m.offloaded, extra_flops=m.extra_flops(),
                              train_only_flops=m.train_only_flops(process_count, batch_devices),
                              offloaded_entries=m.offloaded_entries, served_offloaded=m.served_offloaded)


def parse(gin_files: list[str], bindings: list[str]) -> None:
  """gin parsing with every method's configurables registered (importing scone_jax.methods, at the
  top of this module, registers them)."""
  C.parse_gin(gin_files, bindings)


def load(gin_files: list[str], bindings: list[str], *, data_dir: str | None = None,
         planned: bool = False) -> Experiment:
  """Parses gin, builds every config, and fills in what comes from the data (vocabulary size).
  planned: sizing only (ahead-of-time compile, DATA is a stand-in): the method sizes itself from
  its config (SCONE: the planned K and |V_f|, no f-gram file)."""
  parse(gin_files, bindings)
  data = C.build(C.DataConfig)
  if data_dir:
    data = dataclasses.replace(data, data_dir=data_dir)
  if not data.data_dir:
    raise UserError("no data directory: set DATA_DIR (e.g. --gin.DATA_DIR=\"'/path/to/data'\")")
  meta = shards.load_meta(data.data_dir)
  if data.verify_shards:
    shards.verify_shards(data.data_dir)
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
  method = methods.resolve(model, data, meta, planned=planned)
  return Experiment(model, data, train, mesh, meta, method)


def save_operative_config(workdir: str, header: list[str] = ()) -> None:
  """RUN/config.gin: the bindings this run actually used (gin's operative config), after comment
  lines `header` (versions, devices, values resolved from the data)."""
  if jax.process_index() != 0:
    return
  paths.makedirs(workdir)   # nothing for a bucket
  comments = "".join(f"# {line}\n" for line in header)
  atomic_write_text(paths.join(workdir, "config.gin"), comments + gin.operative_config_str())
