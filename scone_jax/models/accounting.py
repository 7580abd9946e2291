"""Parameter and FLOP accounting (METHODS.md section 4), printed at the start of every run.

Three parameter numbers for every model:
  resident   accelerator-resident parameters at inference (main model, token table T included)
  training   training-only parameters (A_f for SCONE)
  offloaded  offloaded table entries (E_f rows x d for SCONE; hashed tables; STEM tables)
FLOPs per token: a multiply-add counts 2. Inference = the main model's matmuls (each weight used
once per token, the token-embedding gather is free; a tied output layer counts V*D) plus attention
scores and values (2 * 2 * context * heads * head_dim per layer, full context: no causal halving).
Training = 3x the forward FLOPs of the main model, plus 3x A_f's forward FLOPs on the distinct
f-grams of a batch, spread over the batch's tokens.
Sibling methods: hashed n-gram tables add their projections (2 * T * d_sub * d, resident; the
table gathers are free); STEM layers drop their up-projection (2 * d * d_ff each: a gather instead).
"""
from __future__ import annotations

import dataclasses
import math

import jax
from flax import nnx

from scone_jax.config import ModelConfig

TRAINING_ONLY_PREFIXES = ("fgram_model",)       # parameter paths dropped after export
OFFLOADED_PREFIXES = ("ngram_tables", "stem_tables")  # tables that live off the accelerator


@dataclasses.dataclass(frozen=True)
class Accounting:
  resident_params: int
  training_params: int
  offloaded_entries: int
  inference_flops_per_token: float
  train_flops_per_token: float

  def lines(self) -> list[str]:
    return [
        f"params: accelerator-resident at inference {self.resident_params:,}",
        f"params: training-only {self.training_params:,}",
        f"params: offloaded table entries {self.offloaded_entries:,}",
        f"flops/token: inference {self.inference_flops_per_token:,.0f}, training {self.train_flops_per_token:,.0f}",
    ]

  def as_dict(self) -> dict:
    return dataclasses.asdict(self)


def _path_name(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def count_params(abstract_params) -> dict[str, int]:
  """Parameter counts by group, from an abstract (or real) nnx.State of Params."""
  groups = {"resident": 0, "training": 0, "offloaded": 0}
  for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_params)[0]:
    name = _path_name(path)
    n = math.prod(leaf.shape)
    if any(p in name for p in TRAINING_ONLY_PREFIXES):
      groups["training"] += n
    elif any(p in name for p in OFFLOADED_PREFIXES):
      groups["offloaded"] += n
    else:
      groups["resident"] += n
  return groups


def decoder_forward_flops(cfg: ModelConfig, context: int, d_model: int | None = None, num_layers: int | None = None) -> float:
  """Forward FLOPs per token of the decoder blocks (no embedding, no output layer)."""
  d = d_model or cfg.d_model
  layers = cfg.num_layers if num_layers is None else num_layers
  h = cfg.resolved_head_dim
  proj = d * h * (2 * cfg.num_heads + 2 * cfg.num_kv_heads)   # q, o and k, v
  mlp = 3 * d * cfg.d_ff
  attn = 2 * context * cfg.num_heads * h                        # scores + weighted values
  return layers * (2 * (proj + mlp) + 2 * attn)


def main_model_flops(cfg: ModelConfig, context: int) -> float:
  return decoder_forward_flops(cfg, context) + 2 * cfg.d_model * cfg.vocab_size


def account(cfg: ModelConfig, abstract_params, seq_len: int, extra_train_flops_per_token: float = 0.0) -> Accounting:
  groups = count_params(abstract_params)
  fwd = main_model_flops(cfg, seq_len)
  return Accounting(groups["resident"], groups["training"], groups["offloaded"],
                    inference_flops_per_token=fwd, train_flops_per_token=3 * fwd + extra_train_flops_per_token)


def for_experiment(exp, abstract_params, process_count: int = 1, batch_devices: int = 1) -> Accounting:
  """The three numbers and FLOPs of an experiment (SCONE adds A_f and the offloaded table)."""
  base = account(exp.model, abstract_params, exp.data.seq_len)
  sibling = _sibling_flops(exp)
  if sibling:
    return dataclasses.replace(base, inference_flops_per_token=base.inference_flops_per_token + sibling,
                               train_flops_per_token=base.train_flops_per_token + 3 * sibling)
  if exp.fgram_vocab is None:
    return base
  k = exp.max_n
  fcfg = exp.fgram.model_config(exp.model)
  d, df = exp.model.d_model, fcfg.d_model
  per_fgram = k * decoder_forward_flops(fcfg, k) + (2 * k * d * df + 2 * df * d if df != d else 0)
  rows = exp.data.batch_size
  distinct = exp.max_unique(rows // process_count, batch_devices) * process_count
  extra = 3.0 * per_fgram * distinct / (rows * exp.data.seq_len)
  return dataclasses.replace(base, offloaded_entries=exp.num_fgrams * d,
                             train_flops_per_token=base.train_flops_per_token + extra)


def _sibling_flops(exp) -> float:
  """Forward FLOPs per token that LongCat n-gram tables add or STEM layers remove."""
  cfg = exp.model
  if getattr(exp, "ngram_layout", None) is not None:
    from scone_jax.models.ngram_hash import sub_table_width
    return 2.0 * exp.ngram_layout.num_tables * sub_table_width(cfg, exp.ngram) * cfg.d_model
  if getattr(exp, "stem_layers", ()):
    return -2.0 * len(exp.stem_layers) * cfg.d_model * cfg.d_ff
  return 0.0
