"""STEM (docs/METHODS.md 3): a token-indexed FFN up-projection in a subset of the layers.

In a STEM layer l the SwiGLU's up-projection W_up x becomes a row of a per-layer table:
  y = W_down( SiLU(W_gate x) * U_l[x_i] ),   U_l [|V|, d_ff]
Gate and down projections stay dense; no router, no auxiliary loss.

Parameters (the same arrays scanned or not): the decoder's blocks hold every layer's norms,
attention, W_gate and W_down (stacked [L, ...]) and no W_up; its `ffn_up` module (StemUp) holds
  dense_up     W_up of the other layers only, stacked [L - S, d, d_ff]
  stem_tables  U_l of the S STEM layers only, stacked [S, |V|, d_ff]: Xavier-normal, no weight
               decay, rows sharded through the `table_rows` logical axis, offloaded at inference
Why this layout under jax.lax.scan: the scan runs one body for all L layers, so what it scans
over needs a leading L axis, while W_up and U_l exist only in their own kind of layer. The scan
therefore carries each layer's slot in `dense_up` or in `stem_tables` (-1 = the other kind); the
body takes that layer's matrix out of the closed-over stack (a dynamic index on the unsharded
leading axis) and jax.lax.cond runs only the branch of the layer's kind. No parameter is dead
weight (a flag over a full [L, d, d_ff] W_up would keep unused W_up in the STEM layers, counted
as resident) and the stack stays one scan of L steps.

Decoding: the row index is the token id, so rows are known before the step runs. The tables can
stay on device, or in host memory: HostStemRows gathers the next step's rows on the host, once
per distinct token of the batch (on a thread, started as soon as the tokens are known), and the
model takes them as batch["stem_rows"] [S, U, F] with batch["stem_index"] [B, L] (row of each
position among the U distinct tokens) in place of its tables and the token ids.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses

import gin
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from scone_jax import config as C
from scone_jax.config import ModelConfig
from scone_jax.errors import UserError
from scone_jax.methods.base import Method
from scone_jax.models.layers import param
from scone_jax.parallel import constrain


@gin.configurable
@dataclasses.dataclass(frozen=True)
class StemConfig:
  """STEM (docs/METHODS.md 3): the FFN up-projection of chosen layers becomes a token-indexed table.
  `layers` (0-based) wins over `fraction`; a fraction picks round(fraction * L) evenly spaced
  layers (`stem_layers`)."""
  fraction: float = 1 / 3
  layers: tuple = ()


def stem_layers(cfg: StemConfig, num_layers: int) -> tuple[int, ...]:
  """The STEM layers (0-based): StemConfig.layers, or round(fraction * L) evenly spaced layers,
  each at the centre of its share of the stack (L=18, 1/3: 1, 4, 7, 10, 13, 16) (our choice)."""
  if cfg.layers:
    layers = tuple(sorted({int(i) for i in cfg.layers}))
    if len(layers) != len(cfg.layers) or layers[0] < 0 or layers[-1] >= num_layers:
      raise UserError(f"StemConfig.layers={tuple(cfg.layers)} must be distinct layer indices in 0..{num_layers - 1}")
    return layers
  if not 0 < cfg.fraction <= 1:
    raise UserError(f"StemConfig.fraction={cfg.fraction} must be in (0, 1] (or give StemConfig.layers)")
  count = max(1, round(cfg.fraction * num_layers))
  return tuple(int((i + 0.5) * num_layers / count) for i in range(count))


class StemUp(nnx.Module):
  """The FFN up-projection of every layer of a STEM decoder (its BlockStack's `ffn_up`): W_up
  in the dense layers, a token-indexed table row in the STEM layers."""

  def __init__(self, cfg: ModelConfig, layers: tuple[int, ...], rngs: nnx.Rngs):
    num, stem, d, f = cfg.num_layers, len(layers), cfg.d_model, cfg.d_ff
    assert layers and all(0 <= i < num for i in layers), layers
    self.num_layers, self.stem_layer_ids = num, tuple(layers)
    self.dtype = jnp.dtype(cfg.dtype)
    self.dense_up = nnx.data(None)
    if num > stem:
      self.dense_up = param(rngs, nnx.initializers.normal(cfg.init_std), (d, f), ("embed", "mlp"), stack=num - stem)
    xavier = nnx.initializers.xavier_normal(in_axis=-2, out_axis=-1, batch_axis=(0,))
    self.stem_tables = param(rngs, xavier, (stem, cfg.vocab_size, f), ("layers", "table_rows", "table_dim"),
                             decay=False)

  def slots(self) -> tuple[np.ndarray, np.ndarray]:
    """int32 [L] each: every layer's index into stem_tables and into dense_up (-1 = other kind)."""
    stem_slot, dense_slot = np.full(self.num_layers, -1, np.int32), np.full(self.num_layers, -1, np.int32)
    is_stem = np.isin(np.arange(self.num_layers), self.stem_layer_ids)
    stem_slot[is_stem] = np.arange(is_stem.sum())
    dense_slot[~is_stem] = np.arange((~is_stem).sum())
    return stem_slot, dense_slot

  def _up_fn(self, stem_slot, dense_slot, batch):
    """The up-projection of one layer: h [B, L, D] -> [B, L, F]. Slots are Python ints (unscanned:
    the layer's kind is static) or int32 scalars (scanned: jax.lax.cond on the kind)."""
    dt = self.dtype
    static = isinstance(stem_slot, int)

    def pick(stack, slot):
      return jax.lax.dynamic_index_in_dim(stack, jnp.maximum(slot, 0), keepdims=False)

    # This layer's matrices are taken out of the stacks outside the cond: the branch not taken
    # then costs zeros of one layer's matrix in the backward pass, not of the whole stack.
    def table_branch():
      if "stem_rows" in batch:   # rows fetched on the host for the batch's distinct tokens
        table, ids = pick(batch["stem_rows"], stem_slot), batch["stem_index"]             # [U, F], [B, L]
      else:
        table, ids = constrain(pick(self.stem_tables[...], stem_slot), ("table_rows", None)), batch["inputs"]
      return lambda h: constrain(jnp.take(table, ids, axis=0).astype(dt), ("batch", "length", "act_mlp"))

    def dense_branch():
      w_up = pick(self.dense_up[...], dense_slot)
      return lambda h: jnp.einsum("bld,df->blf", h, w_up.astype(dt))

    if self.dense_up is None or (static and stem_slot >= 0):
      return table_branch()
    if static:
      return dense_branch()
    from_table, from_dense = table_branch(), dense_branch()
    return lambda h: jax.lax.cond(stem_slot >= 0, from_table, from_dense, h)

  def up_fn(self, layer, batch):
    """Layer `layer`'s up-projection (h -> [B, L, F]) for `batch`; layer is an int (unscanned
    stack) or an int32 scalar (inside the scan)."""
    assert batch is not None and "inputs" in batch, "STEM layers index their tables by the token ids"
    stem_slot, dense_slot = self.slots()
    if isinstance(layer, int):
      return self._up_fn(int(stem_slot[layer]), int(dense_slot[layer]), batch)
    return self._up_fn(jnp.asarray(stem_slot)[layer], jnp.asarray(dense_slot)[layer], batch)


class HostStemRows:
  """STEM tables in host memory (decoding): the rows of a step's tokens, one per distinct token."""

  def __init__(self, tables_SxVxF: np.ndarray):
    self.tables = np.asarray(tables_SxVxF)
    self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)

  def fetch(self, tokens_BxL: np.ndarray) -> dict:
    """{"stem_rows": [S, B*L, F], the rows of the U distinct tokens first (zeros after: a static
    shape), "stem_index": int32 [B, L], each position's row among them}."""
    tokens = np.asarray(tokens_BxL)
    unique, index = np.unique(tokens, return_inverse=True)
    rows = np.zeros((self.tables.shape[0], tokens.size, self.tables.shape[2]), self.tables.dtype)
    rows[:, :len(unique)] = self.tables[:, unique]
    return {"stem_rows": rows, "stem_index": index.reshape(tokens.shape).astype(np.int32)}

  def prefetch(self, tokens_BxL: np.ndarray) -> concurrent.futures.Future:
    """fetch() on a background thread: call it as soon as the next tokens are known."""
    return self._pool.submit(self.fetch, np.array(tokens_BxL))

  def close(self) -> None:
    self._pool.shutdown(wait=False)


class StemFeatures:
  """Decode features of STEM with its tables in host memory: `stem_rows` [S, U, F] and
  `stem_index` [B, L], the rows of the step's distinct tokens, gathered on a thread as soon as
  the tokens are known. (With the tables on the device no features are needed: the layers index
  them by the token ids.)"""
  history_len = 1

  def __init__(self, tables_SxVxF: np.ndarray):
    self.host = HostStemRows(tables_SxVxF)

  def prompt(self, inputs_BxL: np.ndarray, valid_BxL: np.ndarray):
    return self.host.prefetch(inputs_BxL)

  def step(self, history_BxH: np.ndarray):
    return self.host.prefetch(np.asarray(history_BxH, np.int32)[:, -1:])

  def close(self) -> None:
    self.host.close()


@dataclasses.dataclass
class Stem(Method):
  stem: StemConfig = None
  layers: tuple = ()   # the STEM layers, 0-based

  name = "stem"
  description = "a STEM run"
  offloaded = ("stem_tables",)
  served_offloaded = False   # generate keeps the tables on the device (host rows: issue 14)

  @classmethod
  def resolve(cls, model, data, meta, *, planned=False):
    if model.mlp != "swiglu" or model.bias:
      raise UserError(f"STEM replaces the up-projection of a bias-free SwiGLU FFN (METHODS.md 3): it needs "
                      f"ModelConfig.mlp='swiglu' and bias=False (got mlp={model.mlp!r}, bias={model.bias})")
    scfg = C.build(StemConfig)
    return cls(model, data, scfg, stem_layers(scfg, model.num_layers))

  def ffn_up(self):
    return lambda rngs: StemUp(self.model, self.layers, rngs)

  def describe(self):
    return {"name": self.name, "layers": list(self.layers)}

  def extra_flops(self):
    """STEM layers drop their up-projection (2 d d_ff per token each): a gather instead."""
    return -2.0 * len(self.layers) * self.model.d_model * self.model.d_ff
