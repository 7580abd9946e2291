"""Typed, gin-configurable configuration: one frozen dataclass per concern.

Gin binds the dataclass constructors (`ModelConfig.d_model = 512`); code builds them with no
arguments and gets the bound values. Each embedding method's own config (FgramConfig,
NgramHashConfig, StemConfig) lives in its module of scone_jax/methods/. Experiment files live in experiments/ (model files + run
files, T5X style); `%DATA_DIR`, `%FGRAM_DIR`, `%TRAIN_STEPS` and `%SEED` are the standard macros.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
from typing import ClassVar

import gin

from scone_jax.errors import UserError


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The main decoder; its block design is also A_f's (methods/scone.py). The defaults are
  Llama-style (SwiGLU, RMSNorm, no biases, RoPE); mlp='gelu', norm='layer', bias=True,
  positions='learned' is the GPT-2 block of the SCONE paper's models (docs/METHODS.md 1.6).
  vocab_size 0 = take it from the data's meta.json."""
  vocab_size: int = 0
  d_model: int = 128
  num_layers: int = 2
  num_heads: int = 4
  num_kv_heads: int = 2
  head_dim: int = 0             # 0 = d_model // num_heads
  d_ff: int = 512
  mlp: str = "swiglu"            # swiglu: W_down(SiLU(W_gate x) * W_up x) | gelu: W_down(GELU(W_up x)), tanh form (GPT-2)
  norm: str = "rms"              # rms: RMSNorm (scale) | layer: LayerNorm (scale and bias)
  bias: bool = False             # biases on the q/k/v/o projections and the MLP matrices (GPT-2)
  positions: str = "rope"        # rope: rotary, in attention | learned: a [max_seq_len, d] table added to the input embedding
  max_seq_len: int = 2048        # longest sequence the model accepts (rows of the learned position table; for RoPE a guard)
  rope_theta: float = 10000.0
  norm_eps: float = 1e-6
  tie_embeddings: bool = True
  dtype: str = "float32"         # compute dtype; parameters stay float32
  scan_layers: bool = True
  remat_policy: str = "nothing_saveable"  # none | nothing_saveable | dots | dots_with_no_batch_dims
  init_std: float = 0.02
  embedding: str = "token"       # a method of scone_jax.methods.REGISTRY: token (baseline) | scone | ngram_hash | stem

  RANGES: ClassVar[dict] = {"vocab_size": (0, None), "d_model": (1, None), "num_layers": (1, None),
                            "num_heads": (1, None), "num_kv_heads": (1, None), "head_dim": (0, None),
                            "d_ff": (1, None), "max_seq_len": (2, None), "rope_theta": (0, None, "open"),
                            "norm_eps": (0, None, "open"), "init_std": (0, None, "open")}

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
    for name, allowed in (("mlp", MLPS), ("norm", NORMS), ("positions", POSITIONS)):
      if getattr(self, name) not in allowed:
        raise UserError(f"ModelConfig.{name}={getattr(self, name)!r} is not one of {', '.join(allowed)}")
    if self.positions == "rope" and self.resolved_head_dim % 2:
      raise UserError(f"head dimension {self.resolved_head_dim} must be even for RoPE")
    if self.remat_policy not in REMAT_POLICIES:
      raise UserError(f"ModelConfig.remat_policy={self.remat_policy!r} is not one of {', '.join(REMAT_POLICIES)}")
    if self.dtype not in ("float32", "bfloat16", "float16"):
      raise UserError(f"ModelConfig.dtype={self.dtype!r} is not float32, bfloat16 or float16")


REMAT_POLICIES = ("none", "nothing_saveable", "dots", "dots_with_no_batch_dims")
MLPS = ("swiglu", "gelu")
NORMS = ("rms", "layer")
POSITIONS = ("rope", "learned")


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

  RANGES: ClassVar[dict] = {"seq_len": (2, None), "batch_size": (1, None), "prefetch": (0, None),
                            "eval_batch_size": (0, None)}


@gin.configurable
@dataclasses.dataclass(frozen=True)
class TrainConfig:
  steps: int = 100
  seed: int = 0
  learning_rate: float = 3e-3
  warmup_steps: int = 10
  schedule: str = "cosine"       # after the linear warm-up: cosine (GPT-2, the SCONE paper) or linear (OLMo) decay
  min_lr_ratio: float = 0.1      # the decay ends at learning_rate * min_lr_ratio
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

  # keep_checkpoints 0 would delete every checkpoint the run writes; intervals of 0 never fire.
  RANGES: ClassVar[dict] = {"steps": (1, None), "learning_rate": (0, None, "open"), "warmup_steps": (0, None),
                            "min_lr_ratio": (0, 1), "weight_decay": (0, None), "b1": (0, 1, "open_high"),
                            "b2": (0, 1, "open_high"), "eps": (0, None, "open"), "grad_clip": (0, None),
                            "log_every": (1, None), "eval_every": (0, None), "eval_batches": (0, None),
                            "checkpoint_every": (1, None), "keep_checkpoints": (1, None),
                            "max_nonfinite_skips": (1, None)}
  CHOICES: ClassVar[dict] = {"schedule": ("cosine", "linear")}


# The experiment files ship inside the package (scone_jax/experiments; the repository's
# experiments/ is a link to it), so an installed wheel finds them from any working directory.
EXPERIMENTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "experiments")
_SEARCH_PATHS: list[str] = []   # directories given to gin's include search so far (gin keeps them)


def add_gin_arguments(p, *, required: bool = True) -> None:
  """--gin_file and --gin_search_paths, the same for every command that reads experiment files."""
  p.add_argument("--gin_file", action="append", default=[], required=required,
                 help="gin file (repeatable): a path, or a name under the packaged experiments "
                      f"({EXPERIMENTS_DIR}) or a --gin_search_paths directory, e.g. models/tiny.gin")
  p.add_argument("--gin_search_paths", default="",
                 help="comma-separated directories searched for --gin_file names and gin includes after the "
                      "packaged experiments (T5X style)")


def search_paths_flag(value: str) -> list[str]:
  """--gin_search_paths: existing directories, in order."""
  paths = [os.path.abspath(p) for p in value.split(",") if p]
  for p in paths:
    if not os.path.isdir(p):
      raise UserError(f"--gin_search_paths: {p!r} is not a directory; pass existing directories, comma-separated")
  return paths


def use_search_paths(paths: list[str]) -> None:
  """Adds directories to the gin search (for --gin_file names and includes), once each, after the
  packaged experiments."""
  for place in [EXPERIMENTS_DIR, *paths]:
    if place not in _SEARCH_PATHS:
      gin.add_config_file_search_path(place)
      _SEARCH_PATHS.append(place)


def resolve_gin_file(name: str) -> str:
  """A --gin_file as given (absolute, or relative to the working directory) if it exists, else
  under the packaged experiments, else under each search path in order; a name found in two of
  those with different contents is refused (one would shadow the other silently)."""
  use_search_paths([])
  extra = _SEARCH_PATHS[1:]
  if os.path.isfile(name):
    return os.path.abspath(name)
  found = [os.path.join(p, name) for p in _SEARCH_PATHS if os.path.isfile(os.path.join(p, name))]
  if len(found) > 1 and len({open(f, "rb").read() for f in found}) > 1:
    raise UserError(f"gin file {name!r} is in more than one place ({', '.join(found)}), with different contents: "
                    "pass the path of the one you mean, or rename yours")
  if found:
    return os.path.abspath(found[0])
  raise UserError(f"gin file {name!r} does not exist (looked in the working directory, the packaged experiments "
                  f"{EXPERIMENTS_DIR}{' and ' + ', '.join(extra) if extra else ''}): pass a path or add its "
                  "directory with --gin_search_paths")


def gin_files_of(args) -> list[str]:
  """A command's --gin_file values, each checked to resolve, after its --gin_search_paths joined
  the search (parse_gin resolves them the same way)."""
  use_search_paths(search_paths_flag(getattr(args, "gin_search_paths", "")))
  for f in args.gin_file:
    resolve_gin_file(f)
  return list(args.gin_file)


class _NoIncludeMisses(logging.Filter):
  """Drops gin's log line for an include not found under one search place while it tries the
  next (gin's resource reader logs every such miss at ERROR; the include is found later or the
  parse fails with its own error)."""

  def filter(self, record):
    return not (record.getMessage().startswith("Path not found: ") and record.pathname.endswith("resource_reader.py"))


def _string_hint(binding: str) -> str:
  """For NAME = VALUE with a bare word or path as VALUE: how to quote it on the command line."""
  name, _, value = binding.partition("=")
  value = value.strip()
  if not value or value[0] in "'\"[({-@%0123456789" or value in ("True", "False", "None"):
    return ""
  return f"; a string value needs inner quotes: --gin.{name.strip()}=\"'{value}'\""


def parse_gin(gin_files: list[str], bindings: list[str]) -> None:
  """Parses gin files and `NAME=VALUE` bindings; any gin error becomes a one-line UserError.
  Names resolve as resolve_gin_file says; `include 'models/x.gin'` inside a file resolves the same
  way (the working directory, the packaged experiments, then --gin_search_paths)."""
  gin.clear_config()
  gin_files = [resolve_gin_file(f) for f in gin_files]
  errors = (ValueError, KeyError, TypeError, SyntaxError, IOError)
  quiet = _NoIncludeMisses()
  logging.getLogger().addFilter(quiet)
  try:
    gin.parse_config_files_and_bindings(gin_files, [], finalize_config=False)
  except errors as e:
    raise UserError(f"bad gin configuration: {' '.join(str(e).split())}") from e
  finally:
    logging.getLogger().removeFilter(quiet)
  for binding in bindings:
    try:
      gin.parse_config(binding)
    except errors as e:
      raise UserError(f"bad gin binding {binding!r}: {' '.join(str(e).split())}{_string_hint(binding)}") from e


def operative_bindings(text: str) -> dict[str, str]:
  """NAME -> value text of an operative config such as RUN/config.gin (comments dropped; a value
  gin wrapped onto following lines, after `NAME = \\`, inside brackets or indented, joined with
  single spaces). Macro references (%NAME) are kept as written."""
  out: dict[str, str] = {}
  name, depth, continued = None, 0, False
  for line in text.splitlines():
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
      continue
    piece = stripped[:-1].rstrip() if stripped.endswith("\\") else stripped
    if name is not None and (continued or depth > 0 or line[0].isspace()):
      out[name] = f"{out[name]} {piece}".strip()
    else:
      key, sep, value = piece.partition("=")
      if not sep:
        continue
      name, depth = key.strip(), 0
      out[name] = value.strip()
    continued = stripped.endswith("\\")
    depth += sum(line.count(c) for c in "([{") - sum(line.count(c) for c in ")]}")
  return out


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
  """Builds a gin-configured dataclass, turning gin's errors into UserErrors, and checks every
  field against its type and the class's RANGES (the one validation layer of the configs)."""
  try:
    obj = cls()
  except (ValueError, TypeError, RuntimeError) as e:
    raise UserError(f"bad gin configuration for {cls.__name__}: {' '.join(str(e).split())}") from e
  for field in dataclasses.fields(obj):
    if getattr(obj, field.name) is gin.REQUIRED:   # a `%gin.REQUIRED` macro left unset
      raise UserError(f"{cls.__name__}.{field.name} is required: set the macro it is bound to "
                      "(e.g. --gin.DATA_DIR=\"'/path'\")")
  check_fields(obj)
  return obj


def check_fields(obj) -> None:
  """Types (an int field holds an int, a float field a finite number, a bool a bool, a str a
  str), the ranges in `type(obj).RANGES` {field: (low, high[, "open" | "open_high"])} and the
  allowed values in `type(obj).CHOICES` {field: (value, ...)}."""
  name = type(obj).__name__
  ranges, choices = getattr(type(obj), "RANGES", {}), getattr(type(obj), "CHOICES", {})
  for field in dataclasses.fields(obj):
    value, kind = getattr(obj, field.name), field.type if isinstance(field.type, str) else field.type.__name__
    where = f"{name}.{field.name}={value!r}"
    if kind == "bool" and not isinstance(value, bool):
      raise UserError(f"{where} must be True or False")
    if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
      raise UserError(f"{where} must be a whole number")
    if kind == "float":
      if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{where} must be a finite number")
    if kind == "str" and not isinstance(value, str):
      raise UserError(f"{where} must be a string (gin strings need quotes: '...')")
    if field.name in ranges:
      _check_range(where, value, *ranges[field.name])
    if field.name in choices and value not in choices[field.name]:
      raise UserError(f"{where} is not one of {', '.join(map(str, choices[field.name]))}")


def _check_range(where: str, value, low, high, bounds: str = "closed") -> None:
  low_ok = low is None or (value > low if bounds == "open" else value >= low)
  high_ok = high is None or (value < high if bounds == "open_high" else value <= high)
  if not (low_ok and high_ok):
    lo = "" if low is None else f"{'>' if bounds == 'open' else '>='} {low}"
    hi = "" if high is None else f"{'<' if bounds == 'open_high' else '<='} {high}"
    raise UserError(f"{where} must be {' and '.join(x for x in (lo, hi) if x)}")


def flag_range(low=None, high=None, *, kind=int, bounds: str = "closed"):
  """An argparse `type=` for a numeric flag: the value parsed as `kind`, finite, in range
  (as RANGES); argparse turns the error into its one-line usage error."""
  def parse(text: str):
    try:
      value = kind(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"{text!r} is not a {'whole number' if kind is int else 'number'}") from None
    if isinstance(value, float) and not math.isfinite(value):
      raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    try:
      _check_range("value", value, low, high, bounds)
    except UserError as e:
      raise argparse.ArgumentTypeError(f"{text} {str(e).removeprefix('value ')}") from None
    return value
  return parse
