"""Evaluation (`scone-jax eval` and the in-loop evaluation): token-weighted loss and perplexity
over one ordered pass of a split, and bits per byte (docs/METHODS.md 5).

  evaluate          {"loss", "perplexity", "tokens"}: what the train loop logs
  evaluate_corpus   the same plus the summed NLL, whether the pass was whole, the split's UTF-8
                    bytes and bits per byte: what `scone-jax eval` reports per corpus
"""
from __future__ import annotations

import math

import jax

from scone_jax.data import pipeline, shards
from scone_jax.errors import UserError


def _pass(exp, trainer, params, *, split: str, max_batches: int, data_dir: str | None,
          store) -> tuple[float, float, bool]:
  """(summed NLL in nats, scored tokens, whether the whole split was read) over one ordered pass.
  The pass pads every stream to the longest with empty rows (segment 0, never scored), so each
  target token of the split, EOS included, is scored exactly once."""
  spec = exp.pipeline_spec(split, batch_devices=trainer.batch_devices, store=store, data_dir=data_dir)
  total, tokens, step_fn, complete = 0.0, 0.0, None, True
  with jax.set_mesh(trainer.mesh):
    for i, local in enumerate(pipeline.eval_batches(spec)):
      if max_batches and i >= max_batches:
        complete = False
        break
      if step_fn is None:
        step_fn = trainer.jit_eval_step(local)
      out = jax.device_get(step_fn(params, trainer.global_batch(local, spec.global_batch)))
      total += float(out["loss_sum"])
      tokens += float(out["tokens"])
  return total, tokens, complete


def evaluate(exp, trainer, params, *, split: str = "validation", max_batches: int = 0,
             data_dir: str | None = None, store=None) -> dict:
  """{"loss", "perplexity", "tokens"} over one ordered pass of `split` (or its first batches).
  store: an opened table of precomputed rows (serve/store.py) that replaces the method's
  training-only modules (SCONE: E_f in place of A_f); the method builds the batch features."""
  total, tokens, _ = _pass(exp, trainer, params, split=split, max_batches=max_batches, data_dir=data_dir, store=store)
  loss = total / max(tokens, 1.0)
  return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": tokens}


def bits_per_byte(nll_nats: float, num_bytes: int) -> float:
  """Summed token NLL in nats over the UTF-8 bytes of the text those tokens encode, in bits."""
  return nll_nats / (math.log(2.0) * num_bytes)


def evaluate_corpus(exp, trainer, params, *, split: str = "validation", max_batches: int = 0,
                    data_dir: str | None = None, store=None) -> dict:
  """evaluate's numbers plus "loss_sum" (nats), "complete" (the whole split was read), "bytes"
  (the split's UTF-8 bytes from meta.json `num_bytes`) and "bits_per_byte". Both are None where
  they are unknown: a partial pass (max_batches below the pass's length: the bytes of the part
  read are not recorded, so bits per byte is not estimated), or data without `num_bytes`
  (pretokenized input, directories prepared before it was recorded)."""
  total, tokens, complete = _pass(exp, trainer, params, split=split, max_batches=max_batches, data_dir=data_dir,
                                  store=store)
  where = data_dir or exp.data.data_dir
  meta = shards.load_meta(where)
  if complete:   # every target of the split once: its tokens and one EOS per document
    expected = meta.num_tokens.get(split, 0) + meta.num_documents.get(split, 0)
    if int(round(tokens)) != expected:
      raise UserError(f"{where}/meta.json counts {expected} {split} targets (tokens + one EOS per document), "
                      f"but its shards gave {int(round(tokens))}: re-run `scone-jax prepare`")
  num_bytes = (meta.num_bytes or {}).get(split) if complete else None
  loss = total / max(tokens, 1.0)
  return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": tokens, "loss_sum": total,
          "complete": complete, "bytes": num_bytes,
          "bits_per_byte": bits_per_byte(total, num_bytes) if num_bytes else None}
