"""The main language model: input embedding -> scanned decoder blocks -> norm -> logits.

The input embedding is where the methods differ. The baseline uses T[x]; an embedding variant
(SCONE, hashed n-grams) is a module with `__call__(model, batch) -> embeddings [B, L, D]` set as
`model.input_embedding`, and STEM swaps the FFN up-projection of chosen layers.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from scone_jax.config import ModelConfig
from scone_jax.models.layers import MAIN_AXES, AxisNames, Block, RMSNorm, param
from scone_jax.parallel import constrain

REMAT = {
    "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class BlockStack(nnx.Module):
  """num_layers blocks; with scan_layers their parameters are stacked and run by jax.lax.scan."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, *, num_layers: int, names: AxisNames = MAIN_AXES,
               d_model: int | None = None):
    self.scan = cfg.scan_layers
    self.remat_policy = cfg.remat_policy
    if self.scan:
      self.blocks = Block(cfg, rngs, names=names, stack=num_layers, d_model=d_model)
    else:
      self.blocks = nnx.List([Block(cfg, rngs, names=names, d_model=d_model) for _ in range(num_layers)])

  def _wrap(self, fn):
    if self.remat_policy == "none":
      return fn
    return jax.checkpoint(fn, policy=REMAT[self.remat_policy], prevent_cse=not self.scan)

  def __call__(self, x_BxLxD, positions_BxL, segment_ids_BxL, batch=None):
    """batch: the model's input batch, for stacks whose layers read per-token inputs (STEM's
    scone_jax.models.stem.StemBlockStack); this plain stack does not use it."""
    if not self.scan:
      for block in self.blocks:
        x_BxLxD = self._wrap(lambda x, b=block: b(x, positions_BxL, segment_ids_BxL))(x_BxLxD)
      return x_BxLxD
    graphdef, stacked = nnx.split(self.blocks)

    def body(x, layer_state):
      return nnx.merge(graphdef, layer_state)(x, positions_BxL, segment_ids_BxL), None

    x_BxLxD, _ = jax.lax.scan(self._wrap(body), x_BxLxD, stacked)
    return x_BxLxD


class Transformer(nnx.Module):
  """Llama-style decoder LM. `batch` holds `inputs`, `positions`, `segment_ids` (all [B, L])
  plus whatever the input embedding variant needs."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, decoder: nnx.Module | None = None):
    """decoder: a replacement for the plain block stack (STEM); None = BlockStack."""
    self.cfg = cfg
    d, v = cfg.d_model, cfg.vocab_size
    self.token_embed = param(rngs, nnx.initializers.normal(1.0), (v, d), ("vocab", "embed"))
    self.input_embedding = nnx.data(None)
    self.decoder = decoder if decoder is not None else BlockStack(cfg, rngs, num_layers=cfg.num_layers)
    self.final_norm = RMSNorm(d, cfg.norm_eps, rngs)
    if not cfg.tie_embeddings:
      self.unembed = param(rngs, nnx.initializers.normal(cfg.init_std), (d, v), ("embed", "vocab"))

  def embed_tokens(self, tokens_BxL):
    """T[x] in the compute dtype."""
    # Gather from a table split only by vocabulary rows: each device looks up the rows it holds
    # and one all-reduce combines them (a table also split by width would be all-gathered).
    table = constrain(self.token_embed[...].astype(jnp.dtype(self.cfg.dtype)), ("vocab", None))
    return constrain(jnp.take(table, tokens_BxL, axis=0), ("batch", "length", "act_embed"))

  def embed(self, batch) -> jax.Array:
    if self.input_embedding is None:
      return self.embed_tokens(batch["inputs"])
    return self.input_embedding(self, batch)

  def logits(self, h_BxLxD):
    h = self.final_norm(h_BxLxD)
    dt = jnp.dtype(self.cfg.dtype)
    if self.cfg.tie_embeddings:
      # Scaled so that tied logits start at the same size as untied ones.
      out = jnp.einsum("bld,vd->blv", h, self.token_embed[...].astype(dt)) * (self.cfg.d_model ** -0.5)
    else:
      out = jnp.einsum("bld,dv->blv", h, self.unembed[...].astype(dt))
    return constrain(out.astype(jnp.float32), ("batch", "length", "act_vocab"))

  def __call__(self, batch):
    """Returns float32 logits [B, L, V]."""
    x = self.embed(batch)
    h = self.decoder(x, batch["positions"], batch["segment_ids"], batch)
    return self.logits(h)
