"""Evaluation (`scone-jax eval` and the in-loop evaluation): token-weighted loss and perplexity
over one ordered pass of a split."""
from __future__ import annotations

import math

import jax

from scone_jax.data import pipeline


def evaluate(exp, trainer, params, *, split: str = "validation", max_batches: int = 0,
             data_dir: str | None = None, store=None) -> dict:
  """{"loss", "perplexity", "tokens"} over one ordered pass of `split` (or its first batches).
  store: an opened table of precomputed rows (serve/store.py) that replaces the method's
  training-only modules (SCONE: E_f in place of A_f); the method builds the batch features."""
  spec = exp.pipeline_spec(split, batch_devices=trainer.batch_devices, store=store, data_dir=data_dir)
  total, tokens, step_fn = 0.0, 0.0, None
  with jax.set_mesh(trainer.mesh):
    for i, local in enumerate(pipeline.eval_batches(spec)):
      if max_batches and i >= max_batches:
        break
      if step_fn is None:
        step_fn = trainer.jit_eval_step(local)
      out = jax.device_get(step_fn(params, trainer.global_batch(local, spec.global_batch)))
      total += float(out["loss_sum"])
      tokens += float(out["tokens"])
  loss = total / max(tokens, 1.0)
  return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": tokens}
