"""Decoding with a KV cache: jitted `prefill` and `decode_step`, and the generation loop.

The math is the training model's: `model.hidden(batch, cache)` runs the model's own embedding and
block stack (models/transformer.py) with a KV cache (models/kv_cache.py) passed through every
layer, then `model.logits`. `decode_step` is jitted with the cache donated. Sampling runs on the
device: a step returns the next tokens [B].

Input features. The embedding of a new token comes from `model.embed(batch)`, the same call
training makes, with a batch dict holding `inputs` [B, L] (token ids), `positions` [B, L] and
whatever the method needs. Those extras come from the method's decode features
(`exp.method.decode_features(store)`, interface in methods/base.py). The loop calls
`features.step` as soon as a step's tokens reach the host and collects the result only to
dispatch the next device step; the step's bookkeeping (output lists, stop flags, hooks) runs after
that dispatch, while the device computes. (The row of a new token cannot be read before the token
exists, so the read itself sits between two device steps.)
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from scone_jax.models.kv_cache import KVCache
from scone_jax.serve.sampling import Sampling, sample

PREFILL_STREAM = 2**31 - 1   # the prefill's sampling key: fold_in(seed key, this); step t uses t


class Decoder:
  """Prefill and decode steps of one model with one features source and one sampling rule.

  model_fn(params) -> the NNX model (e.g. Trainer.model); params: its parameters, placed where
  the steps run; cfg: its ModelConfig. Shapes are static per (batch, prompt length, max_len): each new combination
  compiles once."""

  def __init__(self, model_fn: Callable, params, cfg, features, sampling: Sampling = Sampling(), seed: int = 0):
    self.model_fn, self.params, self.cfg, self.features = model_fn, params, cfg, features
    self.store = None   # the opened store the features read rows from, if any (serve/generate.load_decoder)
    self.sampling = sampling.validate()
    self._base_key = jax.random.key(seed)
    self._prefill = jax.jit(self._prefill_impl, donate_argnums=(1,))
    self.decode_step = jax.jit(self._decode_impl, donate_argnums=(1,))
    """decode_step(params, cache, batch, key, step) -> (tokens [B], logits [B, V], cache); the
    cache argument is donated. batch: `inputs` [B, 1] plus the features of those tokens."""

  # -- device side -------------------------------------------------------------------------
  def _prefill_impl(self, params, cache: KVCache, batch: dict, lengths_B, key):
    model = self.model_fn(params)
    h, cache = model.hidden(batch, cache)
    last = jnp.take_along_axis(h, (lengths_B - 1)[:, None, None], axis=1)   # [B, 1, D]
    logits = model.logits(last)[:, 0]
    key = jax.random.fold_in(key, PREFILL_STREAM)
    return sample(logits, key, self.sampling), logits, cache.replace(lengths=lengths_B.astype(jnp.int32))

  def _decode_impl(self, params, cache: KVCache, batch: dict, key, step):
    model = self.model_fn(params)
    batch = {**batch, "positions": cache.lengths[:, None]}
    h, cache = model.hidden(batch, cache)
    logits = model.logits(h)[:, 0]
    key = jax.random.fold_in(key, step)
    return sample(logits, key, self.sampling), logits, cache.replace(lengths=cache.lengths + 1)

  # -- host side ---------------------------------------------------------------------------
  def prefill(self, inputs_BxP: np.ndarray, lengths_B: np.ndarray, max_len: int):
    """Right-padded prompts (each starting with BOS) -> (first new tokens [B], logits [B, V] at
    each prompt's last position, cache holding the prompts)."""
    inputs_BxP = np.asarray(inputs_BxP, np.int32)
    b, p = inputs_BxP.shape
    valid = np.arange(p)[None, :] < np.asarray(lengths_B)[:, None]
    features = self.features.prompt(np.where(valid, inputs_BxP, 0), valid).result()
    batch = {"inputs": inputs_BxP, "positions": np.broadcast_to(np.arange(p, dtype=np.int32), (b, p)), **features}
    cache = KVCache.init(self.cfg, b, max_len)
    return self._prefill(self.params, cache, batch, np.asarray(lengths_B, np.int32), self._base_key)

  def step(self, cache: KVCache, tokens_B: np.ndarray, features: dict, step: int):
    """One decode step for tokens [B] whose features are ready; the cache is donated."""
    batch = {"inputs": np.asarray(tokens_B, np.int32)[:, None], **features}
    return self.decode_step(self.params, cache, batch, self._base_key, np.int32(step))

  def generate(self, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, bos_id: int, eos_id: int,
               force_tokens: np.ndarray | None = None, on_step: Callable | None = None) -> list[list[int]]:
    """Completes every prompt (token ids without BOS) by up to max_new_tokens tokens, stopping a
    row at EOS (not included). force_tokens [B, max_new_tokens]: feed these instead of the sampled
    tokens (teacher forcing, for benchmarks and tests); the result still lists what the model
    sampled at every step, EOS included, and no row stops early. on_step(t): a hook once step t's
    tokens are recorded and step t+1 is dispatched (timing)."""
    b = len(prompts)
    inputs = [[bos_id, *map(int, p)] for p in prompts]
    lengths = np.array([len(x) for x in inputs], np.int32)
    width = int(lengths.max())
    padded = np.zeros((b, width), np.int32)
    for i, x in enumerate(inputs):
      padded[i, :len(x)] = x
    hist_len = self.features.history_len
    history = np.full((b, hist_len), -1, np.int64)
    for i, x in enumerate(inputs):
      tail = x[-hist_len:]
      history[i, hist_len - len(tail):] = tail
    tokens, _, cache = self.prefill(padded, lengths, width + max_new_tokens)
    out: list[list[int]] = [[] for _ in range(b)]
    done = np.zeros(b, bool)
    for t in range(max_new_tokens):
      sampled = np.asarray(tokens)   # waits for the device step
      fed = sampled if force_tokens is None else np.asarray(force_tokens[:, t], np.int32)
      last = t == max_new_tokens - 1
      if not last:
        history = np.concatenate([history[:, 1:], fed[:, None].astype(np.int64)], axis=1)
        pending = self.features.step(history)   # match now; the row read is in flight
      ended = ~done & (sampled == eos_id) if force_tokens is None else np.zeros(b, bool)
      kept = ~done & ~ended
      done |= ended
      stop = last or done.all()
      if not stop:   # the next step is dispatched; the bookkeeping below overlaps it
        tokens, _, cache = self.step(cache, fed, pending.result(), t)
      for i in np.flatnonzero(kept):
        out[i].append(int(sampled[i]))
      if on_step is not None:
        on_step(t)
      if stop:
        break
    return out
