"""AdamW with linear warm-up + cosine (or linear) decay, global-norm clipping and a weight-decay mask.

Which parameters decay is parameter metadata (`weight_decay`, set where the parameter is made):
norms and the embedding tables of the sibling methods take none.
"""
from __future__ import annotations

import jax
import optax
from flax import nnx

from scone_jax.config import TrainConfig


def schedule(cfg: TrainConfig) -> optax.Schedule:
  """0 -> learning_rate linearly over warmup_steps, then down to learning_rate * min_lr_ratio at
  `steps` along a cosine (TrainConfig.schedule 'cosine') or a straight line ('linear')."""
  warmup = max(1, min(cfg.warmup_steps, cfg.steps))
  end = cfg.learning_rate * cfg.min_lr_ratio
  if cfg.schedule == "linear":
    return optax.join_schedules(
        [optax.linear_schedule(0.0, cfg.learning_rate, warmup),
         optax.linear_schedule(cfg.learning_rate, end, max(cfg.steps - warmup, 1))], [warmup])
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=cfg.learning_rate, warmup_steps=warmup,
      decay_steps=max(cfg.steps, warmup + 1), end_value=end)


def decay_mask(abstract_params: nnx.State) -> dict:
  """Pure-dict tree of bools: True where the parameter takes weight decay."""
  return nnx.to_pure_dict(jax.tree.map(
      lambda v: v.replace(bool(v.get_metadata().get("weight_decay", True))),
      abstract_params, is_leaf=lambda x: isinstance(x, nnx.Variable)))


def make_optimizer(cfg: TrainConfig, abstract_params: nnx.State) -> optax.GradientTransformation:
  opt = optax.chain(
      optax.clip_by_global_norm(cfg.grad_clip) if cfg.grad_clip > 0 else optax.identity(),
      optax.adamw(schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                  mask=decay_mask(abstract_params)),
  )
  if cfg.skip_nonfinite_updates:
    opt = optax.apply_if_finite(opt, max_consecutive_errors=cfg.max_nonfinite_skips)
  return opt
