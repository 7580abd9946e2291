"""An experiment: the configs gin describes, resolved against the data, and what they build.

Embedding methods hook in here: a method adds modules to the model and per-row / per-batch
features to the input pipeline (SCONE: f-gram matches and the batch's distinct f-grams; LongCat
n-gram hashing: the hashed table rows of every position; STEM needs only the token ids).
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
  fgram: C.FgramConfig | None = None
  fgram_vocab: object = None        # scone_jax.fgram.vocab.FgramVocab, truncated to FgramConfig.size
  ngram: C.NgramHashConfig | None = None
  ngram_layout: object = None       # scone_jax.data.ngram_ids.NgramTableLayout (resolved sizes)
  stem: C.StemConfig | None = None
  stem_layers: tuple = ()           # the STEM layers, 0-based

  @property
  def max_n(self) -> int:
    return self.fgram_vocab.meta.max_n if self.fgram_vocab is not None else 0

  def build_model(self):
    from scone_jax.models import build_model
    return build_model(self.model, self.train.seed, fgram=self.fgram, max_n=self.max_n,
                       ngram=self.ngram, ngram_layout=self.ngram_layout, stem_layers=self.stem_layers)

  @property
  def num_fgrams(self) -> int:
    """|V_f| of the run (FgramConfig.size, or every f-gram of the file)."""
    return self.fgram.size or len(self.fgram_vocab)

  def max_unique(self, process_rows: int, batch_devices: int) -> int:
    """Static number of distinct f-grams per process batch, a multiple of the batch devices."""
    bound = self.fgram.max_unique or min(process_rows * self.data.seq_len, self.num_fgrams)
    return -(-bound // batch_devices) * batch_devices

  def row_features(self) -> tuple:
    if self.ngram_layout is not None:
      from scone_jax.data.ngram_ids import NgramRows
      return (NgramRows(self.ngram_layout),)
    if self.fgram_vocab is None:
      return ()
    from scone_jax.fgram.matcher import ExactMatcher
    return (MatchRow(ExactMatcher(self.fgram_vocab)),)

  def batch_features(self, process_index: int = 0, batch_devices: int = 1, process_rows: int = 0) -> tuple:
    if self.fgram_vocab is None:
      return ()
    u = self.max_unique(process_rows or self.data.batch_size, batch_devices)
    return (DistinctFgrams(self.fgram_vocab, u, offset=process_index * u),)


class MatchRow:
  """Row feature: the longest f-gram ending at every position (never across segments)."""

  def __init__(self, matcher):
    self.matcher = matcher

  def __call__(self, row: dict) -> dict:
    fgram_id, match_len = self.matcher.match(row["inputs"], row["segment_ids"])
    return {**row, "fgram_id": fgram_id.astype("int32"), "match_len": match_len.astype("int32")}


class DistinctFgrams:
  """Batch feature: the batch's distinct f-grams (padded to a static U) with their tokens, and
  per-position indices into them, offset so they index the list concatenated over processes."""

  def __init__(self, vocab, max_unique: int, offset: int = 0):
    import numpy as np
    self.max_unique, self.offset = max_unique, offset
    tokens, lengths = vocab.token_matrix()
    self.tokens = np.concatenate([tokens, np.full((1, tokens.shape[1]), -1, np.int32)])   # last row: padding
    self.lengths = np.concatenate([lengths, [0]]).astype(np.int32)

  def __call__(self, batch: dict) -> dict:
    import numpy as np
    from scone_jax.fgram.matcher import dedup_batch
    try:
      unique_ids, index, _ = dedup_batch(batch["fgram_id"], self.max_unique)
    except ValueError as e:
      raise UserError(f"a batch has more distinct f-grams than FgramConfig.max_unique={self.max_unique}: "
                      "raise it (0 = a bound that never overflows)") from e
    rows = np.where(unique_ids >= 0, unique_ids, len(self.lengths) - 1)
    index = np.where(index >= 0, index + self.offset, -1).astype(np.int32)
    return {**batch, "fgram_index": index, "unique_tokens": self.tokens[rows], "unique_lengths": self.lengths[rows]}


def load(gin_files: list[str], bindings: list[str], *, data_dir: str | None = None,
         planned_fgrams: bool = False) -> Experiment:
  """Parses gin, builds every config, and fills in what comes from the data (vocabulary size)."""
  C.parse_gin(gin_files, bindings)
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
  exp = Experiment(model, data, train, mesh, meta)
  if model.embedding == "scone":
    if planned_fgrams:
      attach_planned_fgrams(exp)
    else:
      _attach_fgrams(exp)
  elif model.embedding == "ngram_hash":
    from scone_jax.data.ngram_ids import table_layout
    from scone_jax.models.ngram_hash import sub_table_width
    exp.ngram = C.build(C.NgramHashConfig)
    sub_table_width(model, exp.ngram)   # refuses a width that does not divide before anything is built
    # The polynomial's base is the model's vocabulary; pad, eos and bos never enter an n-gram.
    exp.ngram_layout = table_layout(exp.ngram, model.vocab_size, (meta.pad_id, meta.eos_id, meta.bos_id))
  elif model.embedding == "stem":
    from scone_jax.models.stem import stem_layers
    exp.stem = C.build(C.StemConfig)
    exp.stem_layers = stem_layers(exp.stem, model.num_layers)
  return exp


def _attach_fgrams(exp: Experiment) -> None:
  from scone_jax.fgram import vocab as fgram_vocab
  fcfg = C.build(C.FgramConfig)
  if not fcfg.fgram_dir:
    raise UserError("a SCONE run needs FGRAM_DIR (e.g. --gin.FGRAM_DIR=\"'/path/to/fgrams'\")")
  vocab = fgram_vocab.load(fcfg.fgram_dir)
  if vocab.meta.data_fingerprint != shards.data_fingerprint(exp.data.data_dir):
    raise UserError(f"f-grams in {fcfg.fgram_dir!r} were built from other data than {exp.data.data_dir!r}: "
                    "rebuild them with `scone-jax fgrams build`")
  if vocab.meta.vocab_size != exp.data_meta.vocab_size:
    raise UserError(f"f-gram vocabulary size {vocab.meta.vocab_size} != data vocabulary {exp.data_meta.vocab_size}")
  if fcfg.max_n and fcfg.max_n != vocab.meta.max_n:
    raise UserError(f"FgramConfig.max_n={fcfg.max_n} but {fcfg.fgram_dir!r} holds f-grams of up to {vocab.meta.max_n} tokens")
  if fcfg.size:
    if fcfg.size > len(vocab):
      raise UserError(f"FgramConfig.size={fcfg.size} but {fcfg.fgram_dir!r} holds only {len(vocab)} f-grams")
    vocab = fgram_vocab.FgramVocab(vocab.flat[:vocab.offsets[fcfg.size]], vocab.offsets[:fcfg.size + 1],
                                   vocab.counts[:fcfg.size], vocab.meta)
  exp.fgram, exp.fgram_vocab = fcfg, vocab


def attach_planned_fgrams(exp: Experiment) -> None:
  """For ahead-of-time compilation without an f-gram file: shapes depend only on K and the number
  of distinct f-grams per batch, so a stand-in vocabulary of K-1 f-grams carries K, and
  FgramConfig.size the planned |V_f| (accounting, max_unique bound)."""
  from scone_jax.fgram import vocab as fgram_vocab
  fcfg = C.build(C.FgramConfig)
  if fcfg.max_n < 2 or fcfg.size < 1:
    raise UserError("compiling a SCONE run without its f-grams needs FgramConfig.max_n (K >= 2) and "
                    "FgramConfig.size (|V_f|), or FGRAM_DIR on this host")
  grams = [(4,) * n for n in range(2, fcfg.max_n + 1)]   # closed under prefixes and suffixes
  meta = fgram_vocab.FgramMeta(fcfg.max_n, fcfg.size, 1, 0, "", len(grams), exp.model.vocab_size)
  exp.fgram, exp.fgram_vocab = fcfg, fgram_vocab.FgramVocab.from_tuples(grams, [1] * len(grams), meta)


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
