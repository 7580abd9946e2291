"""Golden numbers: one `Trainer.train_step` of a fixed tiny baseline model on a fixed batch.

Everything that feeds the step is pinned here (every numerics-relevant ModelConfig field, the
parameter seed, the batch), so the loss and the gradient norm of the first step are fixed
numbers. A refactor of the model, the attention masking, the loss or the parameter
initialisation that changes them has changed the numerics: find out why before touching the
constants. Bump GOLDEN_* only for an intended change, and say in the commit message what changed
and why the new numbers are right.

Two checks do not depend on the constants: the loss equals a float64 numpy cross-entropy of the
model's own logits, and it is close to the loss of a plain numpy model made of the initial
embedding table alone. At initialisation the blocks add little (their weights have std 0.02)
next to T[x] (std 1), so the logits are nearly RMSNorm(T[x]) T^T / sqrt(d) (tied embeddings).
Such a model mostly predicts the input token itself, so the loss starts above log|V|.
"""
from __future__ import annotations

import math

import jax
import numpy as np

from scone_jax import parallel
from scone_jax.config import MeshConfig, ModelConfig, TrainConfig
from scone_jax.models import build_model
from scone_jax.train.state import Trainer

V = 64
SEED = 0
CFG = ModelConfig(vocab_size=V, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=0, d_ff=64,
                  max_seq_len=16, rope_theta=10000.0, norm_eps=1e-6, tie_embeddings=True, dtype="float32",
                  scan_layers=True, remat_policy="nothing_saveable", init_std=0.02, embedding="token")

# Produced by running this test's step once (CPU, float32, jax 0.10.2 / flax 0.12.8, on the commit
# that added this file) and printing repr(float(...)) of metrics["loss"] and metrics["grad_norm"].
GOLDEN_LOSS = 6.256288051605225
GOLDEN_GRAD_NORM = 1.018707513809204
RTOL = 1e-5   # float32 reductions reordered by another XLA version move the 7th digit, not the 5th


def _batch() -> dict[str, np.ndarray]:
  """Two packed rows as the pipeline makes them (scone_jax/data/pipeline.py): row 0 holds two
  documents (segments 1 and 2, positions restarting at 0), row 1 one document then padding
  (segment 0, not in the loss). BOS = 2, EOS = 1, padding = 0."""
  inputs = [[2, 10, 11, 12, 13, 2, 40, 41, 42, 43, 44, 45],
            [2, 20, 21, 22, 23, 24, 25, 26, 27, 0, 0, 0]]
  targets = [[10, 11, 12, 13, 1, 40, 41, 42, 43, 44, 45, 1],
             [20, 21, 22, 23, 24, 25, 26, 27, 1, 0, 0, 0]]
  segment_ids = [[1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2],
                 [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]]
  positions = [[0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6],
               [0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0]]
  return {k: np.array(v, np.int32) for k, v in
          (("inputs", inputs), ("targets", targets), ("segment_ids", segment_ids), ("positions", positions))}


def _numpy_loss(logits: np.ndarray, batch: dict) -> float:
  """Mean next-token cross-entropy over the positions with segment id > 0, in float64."""
  x = logits.astype(np.float64)
  log_z = np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1)) + x.max(-1)
  picked = np.take_along_axis(x, batch["targets"][..., None].astype(np.int64), -1)[..., 0]
  weights = batch["segment_ids"] > 0
  return float(((log_z - picked) * weights).sum() / weights.sum())


def _embedding_only_logits(params: dict, batch: dict) -> np.ndarray:
  """The model with every block removed, in float64 numpy: RMSNorm(T[x]) T^T / sqrt(d)."""
  table = np.asarray(params["token_embed"], np.float64)
  x = table[batch["inputs"]]
  h = x / np.sqrt((x ** 2).mean(-1, keepdims=True) + CFG.norm_eps) * np.asarray(params["final_norm"]["scale"])
  return h @ table.T / math.sqrt(CFG.d_model)


def test_one_train_step_gives_the_golden_loss_and_grad_norm():
  mesh = parallel.make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  # TrainConfig does not enter the step's loss or gradient (only the update that follows).
  trainer = Trainer(CFG, TrainConfig(steps=10, seed=SEED), mesh, lambda: build_model(CFG, SEED))
  batch = _batch()
  state = trainer.init()
  params0 = jax.device_get(state.params)   # the step donates the state
  with jax.set_mesh(mesh):
    logits0 = np.asarray(jax.jit(lambda p, b: trainer.model(p)(b))(params0, batch))
    state, metrics = trainer.jit_train_step(batch)(state, batch)
  loss, grad_norm = float(metrics["loss"]), float(metrics["grad_norm"])
  print(f"golden step: loss={loss!r} grad_norm={grad_norm!r}")
  assert int(state.step) == 1 and float(metrics["tokens"]) == 21
  assert logits0.shape == (2, 12, V)
  # Independent of the golden constants (module docstring).
  assert abs(loss - _numpy_loss(logits0, batch)) < 1e-5, (loss, _numpy_loss(logits0, batch))
  approx = _numpy_loss(_embedding_only_logits(params0, batch), batch)
  assert abs(loss - approx) < 0.01 and loss > math.log(V), (loss, approx, math.log(V))
  assert math.isfinite(grad_norm) and grad_norm > 0
  assert math.isclose(loss, GOLDEN_LOSS, rel_tol=RTOL), \
      f"loss {loss!r} != golden {GOLDEN_LOSS!r}: the step's numerics drifted (see the module docstring)"
  assert math.isclose(grad_norm, GOLDEN_GRAD_NORM, rel_tol=RTOL), \
      f"grad norm {grad_norm!r} != golden {GOLDEN_GRAD_NORM!r}: the step's numerics drifted (see the module docstring)"
