"""SCONE: A_f once per distinct f-gram == A_f per position (values and gradients); SCONE trains
on the 8-device mesh; accounting of a known config."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from scone_jax import experiment
from scone_jax.config import DataConfig, ModelConfig
from scone_jax.fgram.build import build
from scone_jax.fgram.vocab import FgramMeta, FgramVocab
from scone_jax.methods.scone import DistinctFgrams, FgramConfig, FgramTokens, Scone
from scone_jax.models import accounting
from scone_jax.train import loop
from tests.helpers import make_data, read_metrics, tiny_bindings


def _vocab(rng, k=4, vocab=50, n=40):
  grams = set()
  while len(grams) < n:
    g = tuple(int(t) for t in rng.integers(4, vocab, size=rng.integers(2, k + 1)))
    for a in range(len(g)):          # close under sub-n-grams of length >= 2 (docs/METHODS.md 1.1)
      for b in range(a + 2, len(g) + 1):
        grams.add(g[a:b])
  grams = sorted(grams, key=lambda g: (len(g), g))
  return FgramVocab.from_tuples(grams, [1] * len(grams), FgramMeta(k, len(grams), 1, 0, "", len(grams), vocab))


def test_distinct_fgrams_equal_per_position_values_and_grads():
  rng = np.random.default_rng(0)
  vocab = _vocab(rng)
  k = vocab.meta.max_n
  cfg = ModelConfig(vocab_size=50, d_model=32, num_layers=1, num_heads=4, num_kv_heads=2, d_ff=64, embedding="scone")
  fcfg = FgramConfig(num_layers=2, d_model=16, num_heads=2, num_kv_heads=1, d_ff=32)
  model = Scone(cfg, DataConfig(), fcfg, vocab).build_model(0)
  grams = vocab.as_tuples()
  b, l = 3, 12
  # Positions matched to random f-grams, with many repeats (the point of deduplication).
  fgram_id = np.where(rng.random((b, l)) < 0.7, rng.integers(0, 6, (b, l)), -1).astype(np.int32)
  inputs = rng.integers(4, 50, (b, l)).astype(np.int32)
  base = {"inputs": inputs, "segment_ids": np.ones((b, l), np.int32),
          "positions": np.tile(np.arange(l, dtype=np.int32), (b, 1)), "fgram_id": fgram_id}
  distinct = DistinctFgrams(FgramTokens(vocab), max_unique=8)(dict(base))
  # Reference: one A_f input row per position, built straight from the tuples.
  per_pos_tokens = np.full((b * l, k), -1, np.int32)
  per_pos_len = np.ones(b * l, np.int32)
  for i, r in enumerate(fgram_id.reshape(-1)):
    if r >= 0:
      per_pos_tokens[i, :len(grams[r])] = grams[r]
      per_pos_len[i] = len(grams[r])
  per_pos = {**base, "unique_tokens": per_pos_tokens, "unique_lengths": per_pos_len,
             "fgram_index": np.where(fgram_id.reshape(-1) >= 0, np.arange(b * l), -1).reshape(b, l).astype(np.int32)}
  assert distinct["unique_tokens"].shape[0] == 8 < b * l
  graphdef, params = nnx.split(model, nnx.Param)
  probe = jnp.asarray(rng.normal(size=(b, l, 32)), jnp.float32)

  def f(params, batch):
    m = nnx.merge(graphdef, params)
    return jnp.sum(m.embed({k: jnp.asarray(v) for k, v in batch.items()}) * probe)

  va, ga = jax.value_and_grad(f)(params, distinct)
  vb, gb = jax.value_and_grad(f)(params, per_pos)
  np.testing.assert_allclose(va, vb, rtol=1e-5)
  for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)
  # Gradients reach T directly and through A_f, and reach A_f.
  assert float(jnp.abs(ga["input_embedding"]["fgram_model"]["positions"][...]).sum()) > 0
  # Matched positions really differ from T[x] (replace, not add).
  m = nnx.merge(graphdef, params)
  e = np.asarray(m.embed({k: jnp.asarray(v) for k, v in distinct.items()}))
  t = np.asarray(m.embed_tokens(jnp.asarray(inputs)))
  np.testing.assert_array_equal(e[fgram_id < 0], t[fgram_id < 0])
  assert not np.allclose(e[fgram_id >= 0], t[fgram_id >= 0])


@pytest.mark.slow
def test_scone_trains_on_the_8_device_mesh(tmp_path):
  data, _ = make_data(str(tmp_path / "data"), docs=150)
  build(data, str(tmp_path / "fg"), max_n=3, size=150, min_count=2)
  b = tiny_bindings(data, 30) + [f"FGRAM_DIR = '{tmp_path}/fg'"]
  exp = experiment.load(["models/tiny.gin", "methods/scone.gin", "runs/cpu_mesh8.gin"], b)
  summary = loop.train(exp, str(tmp_path / "run"), quiet=True)
  losses = read_metrics(str(tmp_path / "run"))
  assert np.mean([losses[s]["loss"] for s in (28, 29, 30)]) < np.mean([losses[s]["loss"] for s in (1, 2, 3)]) - 1.0
  acct = summary["accounting"]
  assert acct["offloaded_entries"] == 150 * exp.model.d_model
  assert acct["training_params"] > 0


def test_accounting_of_a_known_config():
  cfg = ModelConfig(vocab_size=1000, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2, d_ff=256,
                    tie_embeddings=False, embedding="scone")
  fcfg = FgramConfig(num_layers=1)
  method = Scone(cfg, DataConfig(), fcfg, _vocab(np.random.default_rng(0), k=4))
  model = nnx.eval_shape(lambda: method.build_model(0))
  _, params = nnx.split(model, nnx.Param)
  groups = accounting.count_params(params, Scone.training_only, Scone.offloaded)
  d, f, v, h = 64, 256, 1000, 16
  block = d * h * (4 + 2 + 2 + 4) // 1 + 3 * d * f + 2 * d   # wq + wk + wv + wo, mlp, two norms
  assert block == 4 * d * h + 2 * 2 * d * h + 4 * h * d + 3 * d * f + 2 * d
  main = v * d + 2 * block + d + d * v                          # T, blocks, final norm, unembed
  fgram_model = 4 * d + 1 * block + d                           # positions, blocks, final norm
  assert groups == {"resident": main, "training": fgram_model, "offloaded": 0}
  acct = accounting.account(cfg, params, seq_len=128)
  per_layer = 2 * (d * h * (2 * 4 + 2 * 2) + 3 * d * f) + 2 * 2 * 128 * 4 * h
  assert acct.inference_flops_per_token == 2 * per_layer + 2 * d * v
  assert acct.train_flops_per_token == 3 * acct.inference_flops_per_token
