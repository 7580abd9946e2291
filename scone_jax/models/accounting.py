"""Parameter and FLOP accounting (docs/METHODS.md 4), printed at the start of every run.

Three parameter numbers for every model:
  resident   accelerator-resident parameters at inference (main model, token table T included)
  training   training-only parameters (A_f for SCONE)
  offloaded  table entries the serving path keeps off the accelerator (E_f rows x d for SCONE).
             A method's tables that could be offloaded but that `generate` still serves from the
             device (LongCat's hashed tables, STEM's tables: Method.served_offloaded False) count
             as resident; `offloadable_entries` says how many entries they hold.
FLOPs per token: a multiply-add counts 2. Inference = the main model's matmuls (each weight used
once per token, the token-embedding gather is free; a tied output layer counts V*D) plus attention
scores and values (2 * 2 * context * heads * head_dim per layer, full context: no causal halving).
The FFN has 3 matrices (SwiGLU) or 2 (GELU); biases, norms and the learned position table
(ModelConfig.positions='learned', a lookup) are parameters without matmul FLOPs.
Training = 3x the forward FLOPs of the main model, plus 3x A_f's forward FLOPs on the distinct
f-grams of a batch, spread over the batch's tokens.
What a method adds (its parameter groups, its extra FLOPs) it says itself (scone_jax/methods/);
`scone_jax.experiment.Experiment.accounting` puts the pieces together.
"""
from __future__ import annotations

import dataclasses
import math

import jax

from scone_jax.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class Accounting:
  resident_params: int
  training_params: int
  offloaded_entries: int
  inference_flops_per_token: float
  train_flops_per_token: float
  train_only_flops_per_token: float = 0.0   # part of train_flops_per_token (planned; an upper bound for SCONE)
  offloadable_entries: int = 0   # entries of the method's offloadable tables (= offloaded_entries where served so)

  def lines(self) -> list[str]:
    kept = ""
    if self.offloadable_entries != self.offloaded_entries:
      kept = (f" (its {self.offloadable_entries:,} table entries could be offloaded, but generate serves them from "
              "the accelerator: counted resident)")
    return [
        f"params: accelerator-resident at inference {self.resident_params:,}",
        f"params: training-only {self.training_params:,}",
        f"params: offloaded table entries {self.offloaded_entries:,}{kept}",
        f"flops/token: inference {self.inference_flops_per_token:,.0f}, training {self.train_flops_per_token:,.0f}",
    ]

  def as_dict(self) -> dict:
    return dataclasses.asdict(self)


def _path_name(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def count_params(abstract_params, training_only: tuple[str, ...] = (), offloaded: tuple[str, ...] = ()) -> dict[str, int]:
  """Parameter counts by group, from an abstract (or real) nnx.State of Params. training_only /
  offloaded: parameter path components of those groups (a method's); the rest is resident."""
  groups = {"resident": 0, "training": 0, "offloaded": 0}
  for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_params)[0]:
    parts = _path_name(path).split("/")
    n = math.prod(leaf.shape)
    if any(p in parts for p in training_only):
      groups["training"] += n
    elif any(p in parts for p in offloaded):
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
  mlp = (3 if cfg.mlp == "swiglu" else 2) * d * cfg.d_ff        # W_gate, W_up, W_down | W_up, W_down (GELU)
  attn = 2 * context * cfg.num_heads * h                        # scores + weighted values
  return layers * (2 * (proj + mlp) + 2 * attn)


def main_model_flops(cfg: ModelConfig, context: int) -> float:
  return decoder_forward_flops(cfg, context) + 2 * cfg.d_model * cfg.vocab_size


def account(cfg: ModelConfig, abstract_params, seq_len: int, *, training_only: tuple[str, ...] = (),
            offloaded: tuple[str, ...] = (), extra_flops: float = 0.0, train_only_flops: float = 0.0,
            offloaded_entries=None, served_offloaded: bool = True) -> Accounting:
  """The three numbers and FLOPs per token. extra_flops: forward FLOPs per token a method adds to
  the main model (training counts 3x); train_only_flops: training FLOPs per token of
  training-only modules; offloaded_entries: counted offloaded parameters -> entries (a method's
  off-accelerator table that is not a parameter, SCONE's E_f); served_offloaded: False when the
  serving path keeps the `offloaded` groups on the accelerator (they count as resident)."""
  groups = count_params(abstract_params, training_only, offloaded)
  fwd = main_model_flops(cfg, seq_len) + extra_flops
  entries = groups["offloaded"] if offloaded_entries is None else offloaded_entries(groups["offloaded"])
  resident = groups["resident"] + (0 if served_offloaded else groups["offloaded"])
  return Accounting(resident, groups["training"], entries if served_offloaded else 0, inference_flops_per_token=fwd,
                    train_flops_per_token=3 * fwd + train_only_flops, train_only_flops_per_token=train_only_flops,
                    offloadable_entries=entries)
