"""Typed, gin-configurable configuration: one frozen dataclass per concern.

Gin binds the dataclass constructors (`ModelConfig.d_model = 512`); code builds them with no
arguments and gets the bound values. Each embedding method's own config (FgramConfig,
NgramHashConfig, StemConfig) lives in its module of scone_jax/methods/. Experiment files live in experiments/ (model files + run
files, T5X style); `%DATA_DIR`, `%FGRAM_DIR`, `%TRAIN_STEPS` and `%SEED` are the standard macros.
"""
from __future__ import annotations

import dataclasses
import os

import gin

from scone_jax.errors import UserError


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The main decoder (Llama-style). vocab_size 0 = take it from the data's meta.json."""
  vocab_size: int = 0
  d_model: int = 128
  num_layers: int = 2
  num_heads: int = 4
  num_kv_heads: int = 2
  head_dim: int = 0             # 0 = d_model // num_heads
  d_ff: int = 512
  max_seq_len: int = 2048        # longest sequence the model accepts (RoPE has no table; this is a guard)
  rope_theta: float = 10000.0
  norm_eps: float = 1e-6
  tie_embeddings: bool = True
  dtype: str = "float32"         # compute dtype; parameters stay float32
  scan_layers: bool = True
  remat_policy: str = "nothing_saveable"  # none | nothing_saveable | dots | dots_with_no_batch_dims
  init_std: float = 0.02
  embedding: str = "token"       # a method of scone_jax.methods.REGISTRY: token (baseline) | scone | ngram_hash | stem

  @property
  def resolved_head_dim(self) -> int:
    return self.head_dim or self.d_model // self.num_heads

  def validate(self) -> None:
    if self.vocab_size <= 0:
      raise UserError("ModelConfig.vocab_size is unset: give --gin.ModelConfig.vocab_size or a DATA_DIR with meta.json")
    if self.num_heads % self.num_kv_heads:
      raise UserError(f"ModelConfig.num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
    if not self.head_dim and self.d_model % self.num_heads:
      raise UserError(f"ModelConfig.d_model={self.d_model} is not divisible by num_heads={self.num_heads}; set head_dim")
    if self.resolved_head_dim % 2:
      raise UserError(f"head dimension {self.resolved_head_dim} must be even for RoPE")
    if self.remat_policy not in REMAT_POLICIES:
      raise UserError(f"ModelConfig.remat_policy={self.remat_policy!r} is not one of {', '.join(REMAT_POLICIES)}")
    if self.dtype not in ("float32", "bfloat16", "float16"):
      raise UserError(f"ModelConfig.dtype={self.dtype!r} is not float32, bfloat16 or float16")


REMAT_POLICIES = ("none", "nothing_saveable", "dots", "dots_with_no_batch_dims")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Mesh axis sizes; exactly one may be -1 (fill in with the remaining devices)."""
  data: int = -1
  fsdp: int = 1
  tensor: int = 1


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DataConfig:
  data_dir: str = ""
  seq_len: int = 128
  batch_size: int = 8            # global batch (sequences per step, all processes together)
  shuffle_seed: int = 0
  prefetch: int = 2              # batches prepared ahead in a background thread
  eval_batch_size: int = 0       # 0 = batch_size
  verify_shards: bool = True     # check shard sha256s against meta.json before training/eval


@gin.configurable
@dataclasses.dataclass(frozen=True)
class TrainConfig:
  steps: int = 100
  seed: int = 0
  learning_rate: float = 3e-3
  warmup_steps: int = 10
  min_lr_ratio: float = 0.1      # cosine decays to learning_rate * min_lr_ratio
  weight_decay: float = 0.1
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8
  grad_clip: float = 1.0
  log_every: int = 10
  eval_every: int = 50           # 0 = only at the end
  eval_batches: int = 8          # 0 = the whole validation split
  checkpoint_every: int = 50
  keep_checkpoints: int = 3
  async_checkpoint: bool = True
  checkpoint_hashes: bool = True   # record and verify sha256s of checkpoint files (local paths)
  stop_on_nonfinite: bool = True
  skip_nonfinite_updates: bool = False  # skip steps whose gradients are not finite (optax.apply_if_finite)
  max_nonfinite_skips: int = 10         # ... but no more than this many in a row


EXPERIMENTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments")


def parse_gin(gin_files: list[str], bindings: list[str]) -> None:
  """Parses gin files and `NAME=VALUE` bindings; any gin error becomes a one-line UserError."""
  gin.clear_config()
  search = [os.getcwd(), EXPERIMENTS_DIR]
  resolved = []
  for f in gin_files:
    found = [os.path.join(p, f) for p in search if os.path.isfile(os.path.join(p, f))]
    if not found:
      raise UserError(f"gin file {f!r} does not exist (looked in the working directory and {EXPERIMENTS_DIR})")
    resolved.append(os.path.abspath(found[0]))
  # `include 'models/x.gin'` resolves against experiments/ first (gin logs an error per miss).
  gin.config._LOCATION_PREFIXES[:] = [EXPERIMENTS_DIR, ""]
  gin_files = resolved
  errors = (ValueError, KeyError, TypeError, SyntaxError, IOError)
  try:
    gin.parse_config_files_and_bindings(gin_files, [], finalize_config=False)
  except errors as e:
    raise UserError(f"bad gin configuration: {' '.join(str(e).split())}") from e
  for binding in bindings:
    try:
      gin.parse_config(binding)
    except errors as e:
      raise UserError(f"bad gin binding {binding!r}: {' '.join(str(e).split())}") from e


def bindings_from_flags(extra: list[str]) -> list[str]:
  """Turns `--gin.NAME=VALUE` flags into gin binding strings (T5X style)."""
  out = []
  for arg in extra:
    if not arg.startswith("--gin."):
      raise UserError(f"unrecognized argument {arg!r}; gin overrides look like --gin.ModelConfig.d_model=256")
    body = arg[len("--gin."):]
    if "=" not in body:
      raise UserError(f"gin override {arg!r} has no '=VALUE'")
    name, value = body.split("=", 1)
    out.append(f"{name} = {value}")
  return out


def build(cls):
  """Builds a gin-configured dataclass, turning gin's errors into UserErrors."""
  try:
    obj = cls()
  except (ValueError, TypeError, RuntimeError) as e:
    raise UserError(f"bad gin configuration for {cls.__name__}: {' '.join(str(e).split())}") from e
  for field in dataclasses.fields(obj):
    if getattr(obj, field.name) is gin.REQUIRED:   # a `%gin.REQUIRED` macro left unset
      raise UserError(f"{cls.__name__}.{field.name} is required: set the macro it is bound to "
                      "(e.g. --gin.DATA_DIR=\"'/path'\")")
  return obj
