"""SCONE (METHODS.md 1.3-1.4): the f-gram model A_f and the embedding it produces.

A_f reads the token embeddings T[x_j..x_i] of an f-gram (right-padded to K), adds its own learned
absolute position table, runs L_f causal decoder blocks of the main design (at width d_f, with
d -> d_f and d_f -> d projections when d_f != d) and a final norm; the output at the f-gram's
last position is the f-gram's embedding. Causal attention makes right-padding exact.

Per batch, A_f runs once per distinct f-gram: the pipeline ships `unique_tokens` [U, K],
`unique_lengths` [U] and `fgram_index` [B, L] (row of the distinct list, -1 = unmatched); a matched
position's embedding replaces T[x_i] (no add, no gate). At inference the batch may carry
`unique_rows` [U, D] instead of `unique_tokens`/`unique_lengths`: the distinct f-grams' rows of the
exported table E_f (METHODS.md 1.5), used as they are.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from scone_jax.config import FgramConfig, ModelConfig
from scone_jax.models.layers import FGRAM_AXES, RMSNorm, param
from scone_jax.models.transformer import BlockStack
from scone_jax.parallel import constrain


class FgramModel(nnx.Module):
  def __init__(self, main: ModelConfig, fcfg: FgramConfig, max_n: int, rngs: nnx.Rngs):
    cfg = fcfg.model_config(main)
    self.cfg, self.max_n = cfg, max_n
    d, df = main.d_model, cfg.d_model
    self.positions = param(rngs, nnx.initializers.normal(cfg.init_std), (max_n, df), ("fgram_pos", "fgram_embed"))
    self.in_proj = nnx.data(None)
    self.out_proj = nnx.data(None)
    if df != d:
      self.in_proj = param(rngs, nnx.initializers.lecun_normal(), (d, df), ("embed", "fgram_embed"))
      self.out_proj = param(rngs, nnx.initializers.lecun_normal(), (df, d), ("fgram_embed", "embed"))
    self.blocks = BlockStack(cfg, rngs, num_layers=cfg.num_layers, names=FGRAM_AXES, d_model=df)
    self.final_norm = RMSNorm(df, cfg.norm_eps, rngs, axis="fgram_embed")

  def __call__(self, token_emb_UxKxD, lengths_U):
    """token_emb [U, K, D] (right-padded), lengths [U] in 2..K -> f-gram embeddings [U, D]."""
    dt = jnp.dtype(self.cfg.dtype)
    u, k, _ = token_emb_UxKxD.shape
    x = token_emb_UxKxD.astype(dt)
    if self.in_proj is not None:
      x = jnp.einsum("ukd,de->uke", x, self.in_proj[...].astype(dt))
    x = x + self.positions[...][:k].astype(dt)[None]
    x = constrain(x, ("unique_fgrams", None, None))
    positions = jnp.broadcast_to(jnp.arange(k, dtype=jnp.int32), (u, k))
    h = self.blocks(x, positions, jnp.ones((u, k), jnp.int32))
    last = jnp.clip(lengths_U - 1, 0, k - 1)
    h_last = jnp.take_along_axis(h, last[:, None, None], axis=1)[:, 0]
    h_last = self.final_norm(h_last)
    if self.out_proj is not None:
      h_last = jnp.einsum("ue,ed->ud", h_last, self.out_proj[...].astype(dt))
    return h_last


class SconeEmbedding(nnx.Module):
  """The input embedding of a SCONE model: A_f's output where an f-gram matches, else T[x]."""

  def __init__(self, main: ModelConfig, fcfg: FgramConfig, max_n: int, rngs: nnx.Rngs):
    self.fgram_model = FgramModel(main, fcfg, max_n, rngs)

  def fgram_embeddings(self, model, unique_tokens_UxK, unique_lengths_U):
    """A_f over a list of f-grams given by their token ids ([U, K], -1 padded): [U, D]."""
    token_emb = model.embed_tokens(jnp.maximum(unique_tokens_UxK, 0))
    return self.fgram_model(token_emb, jnp.maximum(unique_lengths_U, 1))

  def __call__(self, model, batch):
    token_emb = model.embed_tokens(batch["inputs"])
    if "unique_rows" in batch:   # rows of an exported table E_f (serve/, eval --store): A_f is not run
      fgram_emb_UxD = batch["unique_rows"]
    else:
      fgram_emb_UxD = self.fgram_embeddings(model, batch["unique_tokens"], batch["unique_lengths"])
    index = batch["fgram_index"]
    gathered = jnp.take(fgram_emb_UxD.astype(token_emb.dtype), jnp.maximum(index, 0), axis=0)
    out = jnp.where((index >= 0)[..., None], gathered, token_emb)
    return constrain(out, ("batch", "length", "act_embed"))
