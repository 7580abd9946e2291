"""The main language model: input embedding -> scanned decoder blocks -> norm -> logits.

One block stack serves every use: training (`cache=None`), the f-gram model A_f (its own axes
and width), STEM (the FFN up-projection of chosen layers comes from a token-indexed table) and
KV-cache decoding (serve/decode.py passes a models.kv_cache.KVCache through the same loop).

Where the methods differ (scone_jax/methods/): the input embedding — a module with
`__call__(model, batch) -> [B, L, D]` set as `model.input_embedding` (SCONE, hashed n-grams) —
and the FFN up-projection — an `ffn_up` module of the stack with `up_fn(layer, batch)` (STEM).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from scone_jax.config import ModelConfig
from scone_jax.models.layers import MAIN_AXES, AxisNames, Block, make_norm, param
from scone_jax.parallel import constrain

REMAT = {
    "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}

# rngs -> a module with `up_fn(layer, batch) -> (h [B, L, D] -> [B, L, F])`: the up-projection of
# every layer of a stack whose blocks have no W_up (STEM, methods/stem.py).
FfnUpFactory = Callable[[nnx.Rngs], nnx.Module]


TOKEN_INIT_STD = 1.0   # T's rows at initialisation: N(0, 1) (LongCat's amplification restores this scale)

class BlockStack(nnx.Module):
  """num_layers blocks; with scan_layers their parameters are stacked and run by jax.lax.scan.

  ffn_up: None (each block has its own W_up) or a factory of the module that gives every layer's
  up-projection (its parameters are created after the blocks'; it lives at `<stack>/ffn_up`)."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, *, num_layers: int, names: AxisNames = MAIN_AXES,
               d_model: int | None = None, ffn_up: FfnUpFactory | None = None):
    self.scan = cfg.scan_layers
    self.remat_policy = cfg.remat_policy
    self.num_layers = num_layers
    kw = dict(names=names, d_model=d_model, up_proj=ffn_up is None)
    if self.scan:
      self.blocks = Block(cfg, rngs, stack=num_layers, **kw)
    else:
      self.blocks = nnx.List([Block(cfg, rngs, **kw) for _ in range(num_layers)])
    self.ffn_up = nnx.data(None if ffn_up is None else ffn_up(rngs))

  def _wrap(self, fn, cache):
    if self.remat_policy == "none" or cache is not None:   # decoding never differentiates
      return fn
    return jax.checkpoint(fn, policy=REMAT[self.remat_policy], prevent_cse=not self.scan)

  def __call__(self, x_BxLxD, positions_BxL, segment_ids_BxL, batch=None, cache=None):
    """x [B, L, D] -> (hidden states [B, L, D], the updated cache or None).

    batch: the model's input batch, for layers that read per-token inputs (STEM's tables);
    cache: None in training; when decoding, a KVCache that every layer reads and writes (its
    lengths are not advanced here)."""

    def layer_fn(block, x, cache, layer):
      up_fn = None if self.ffn_up is None else self.ffn_up.up_fn(layer, batch)
      return block(x, positions_BxL, segment_ids_BxL, up_fn=up_fn, cache=cache, layer=layer)

    if not self.scan:
      for layer, block in enumerate(self.blocks):
        step = self._wrap(lambda x, c, b=block, i=layer: layer_fn(b, x, c, i), cache)
        x_BxLxD, cache = step(x_BxLxD, cache)
      return x_BxLxD, cache
    graphdef, stacked = nnx.split(self.blocks)

    def body(carry, xs):
      layer_state, layer = xs
      return layer_fn(nnx.merge(graphdef, layer_state), *carry, layer), None

    (x_BxLxD, cache), _ = jax.lax.scan(self._wrap(body, cache), (x_BxLxD, cache),
                                       (stacked, jnp.arange(self.num_layers)))
    return x_BxLxD, cache


class Transformer(nnx.Module):
  """Decoder LM (Llama-style by default; GPT-2-style with ModelConfig's block options). `batch`
  holds `inputs`, `positions`, `segment_ids` (all [B, L]) plus whatever the method's input
  embedding or layers need.

  ModelConfig.positions='learned': an absolute position table P [max_seq_len, d] (GPT-2's wpe),
  row `positions` (each segment's own, from 0; when decoding, the cache's absolute slot) added
  to the input embedding, whatever the method's embedding is. Initialised N(0, 1) like T (GPT-2
  and nanoGPT initialise wpe at wte's scale; our T is N(0, 1)). It takes weight decay, like T:
  nanoGPT decays every 2-D parameter, wte and wpe included, and MaxText's AdamW decays every
  parameter unless its `adamw_mask` names it (empty by default)."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, *, ffn_up: FfnUpFactory | None = None):
    self.cfg = cfg
    d, v = cfg.d_model, cfg.vocab_size
    self.token_embed = param(rngs, nnx.initializers.normal(TOKEN_INIT_STD), (v, d), ("vocab", "embed"))
    self.pos_embed = nnx.data(None)
    if cfg.positions == "learned":
      self.pos_embed = param(rngs, nnx.initializers.normal(1.0), (cfg.max_seq_len, d), ("pos", "embed"))
    self.input_embedding = nnx.data(None)
    self.decoder = BlockStack(cfg, rngs, num_layers=cfg.num_layers, ffn_up=ffn_up)
    self.final_norm = make_norm(cfg, d, rngs)
    if not cfg.tie_embeddings:
      self.unembed = param(rngs, nnx.initializers.normal(cfg.init_std), (d, v), ("embed", "vocab"))

  def embed_tokens(self, tokens_BxL):
    """T[x] in the compute dtype."""
    # Gather from a table split only by vocabulary rows: each device looks up the rows it holds
    # and one all-reduce combines them (a table also split by width would be all-gathered).
    table = constrain(self.token_embed[...].astype(jnp.dtype(self.cfg.dtype)), ("vocab", None))
    return constrain(jnp.take(table, tokens_BxL, axis=0), ("batch", "length", "act_embed"))

  def embed(self, batch) -> jax.Array:
    """The input embedding [B, L, D]: T[x] or the method's, plus the learned position rows."""
    x = self.embed_tokens(batch["inputs"]) if self.input_embedding is None else self.input_embedding(self, batch)
    if self.pos_embed is None:
      return x
    # A lookup (no FLOPs counted). The table is small (max_seq_len x d): gathered whole, then
    # read by position; a position past the table gives NaN (mode "fill"), never a wrong row.
    table = constrain(self.pos_embed[...].astype(x.dtype), (None, None))
    rows = jnp.take(table, batch["positions"], axis=0, mode="fill")
    return constrain(x + rows, ("batch", "length", "act_embed"))

  def logits(self, h_BxLxD):
    h = self.final_norm(h_BxLxD)
    dt = jnp.dtype(self.cfg.dtype)
    if self.cfg.tie_embeddings:
      # Scaled so that tied logits start at the same size as untied ones.
      out = jnp.einsum("bld,vd->blv", h, self.token_embed[...].astype(dt)) * (self.cfg.d_model ** -0.5)
    else:
      out = jnp.einsum("bld,dv->blv", h, self.unembed[...].astype(dt))
    return constrain(out.astype(jnp.float32), ("batch", "length", "act_vocab"))

  def hidden(self, batch, cache=None):
    """(final hidden states [B, L, D] before the final norm, the updated cache or None).
    Decoding passes `cache` and new tokens at `batch["positions"]` (no segment ids needed)."""
    x = self.embed(batch)
    return self.decoder(x, batch["positions"], batch.get("segment_ids"), batch, cache)

  def __call__(self, batch):
    """Returns float32 logits [B, L, V]."""
    return self.logits(self.hidden(batch)[0])


def build_model(cfg: ModelConfig, seed: int, *, input_embedding: FfnUpFactory | None = None,
                ffn_up: FfnUpFactory | None = None) -> Transformer:
  """The main model with a method's pieces (scone_jax/methods/ call this): input_embedding, a
  factory rngs -> module set as `model.input_embedding` (created after the model's own
  parameters); ffn_up, see BlockStack. Both None = the baseline."""
  rngs = nnx.Rngs(params=seed)
  model = Transformer(cfg, rngs, ffn_up=ffn_up)
  if input_embedding is not None:
    model.input_embedding = nnx.data(input_embedding(rngs))
  return model
