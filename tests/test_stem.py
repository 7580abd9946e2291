"""STEM: the layer choice, the model against a dense reference whose up-projection is one-hot
token ids times the table (scanned with lax.cond and unscanned, values and gradients), decoding
with the tables in host memory (rows fetched ahead, deduplicated per batch) equals the device
tables, initialisation and decay, accounting, and training on the 8-device mesh."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from scone_jax import experiment, parallel
from scone_jax.config import DataConfig, ModelConfig
from scone_jax.errors import UserError
from scone_jax.methods.base import TokenFeatures
from scone_jax.methods.stem import HostStemRows, Stem, StemConfig, StemFeatures, stem_layers
from scone_jax.models import accounting, build_model
from scone_jax.serve.decode import Decoder
from scone_jax.train import loop
from scone_jax.train.optimizer import decay_mask
from tests.helpers import make_data, read_metrics, stepwise_logits, tiny_bindings
from tests.reference import stem_reference_logits

V, D, F, L = 40, 32, 48, 3
STEM = (0, 2)


def test_stem_layers_are_evenly_spaced_or_given():
  assert stem_layers(StemConfig(), 18) == (1, 4, 7, 10, 13, 16)
  assert stem_layers(StemConfig(), 3) == (1,)
  assert stem_layers(StemConfig(fraction=0.5), 4) == (1, 3)
  assert stem_layers(StemConfig(fraction=1.0), 3) == (0, 1, 2)
  assert stem_layers(StemConfig(layers=(5, 0)), 6) == (0, 5)
  for n in range(1, 40):
    chosen = stem_layers(StemConfig(), n)
    gaps = np.diff(chosen)
    assert len(chosen) == max(1, round(n / 3)) and (gaps > 0).all() and (len(gaps) == 0 or np.ptp(gaps) <= 1), (n, chosen)
  for bad in (StemConfig(layers=(6,)), StemConfig(layers=(1, 1)), StemConfig(fraction=0.0)):
    with pytest.raises(UserError):
      stem_layers(bad, 6)


def _stem_model(cfg, layers, seed):
  return Stem(cfg, DataConfig(), StemConfig(layers=layers), layers).build_model(seed)


def _models():
  cfg = ModelConfig(vocab_size=V, d_model=D, num_layers=L, num_heads=4, num_kv_heads=2, d_ff=F, embedding="stem")
  scanned = _stem_model(cfg, STEM, 0)
  unscanned = _stem_model(ModelConfig(**{**cfg.__dict__, "scan_layers": False}), STEM, 1)
  # The same values in the unscanned layout: block i = slice i of the stacked blocks.
  ps = nnx.to_pure_dict(nnx.state(scanned, nnx.Param))
  state_u = nnx.state(unscanned, nnx.Param)
  pu = nnx.to_pure_dict(state_u)
  pu = {**ps, "decoder": {**ps["decoder"], "blocks": {i: jax.tree.map(lambda a, i=i: a[i], ps["decoder"]["blocks"])
                                                      for i in range(L)}}}
  nnx.replace_by_pure_dict(state_u, pu)
  nnx.update(unscanned, state_u)
  return scanned, unscanned


def _batch(rng, b=3, length=10):
  inputs = rng.integers(3, V, (b, length)).astype(np.int32)
  seg = np.ones((b, length), np.int32)
  seg[0, 6:] = 2
  pos = np.concatenate([np.arange(6), np.arange(length - 6)])[None].repeat(b, 0).astype(np.int32)
  pos[1:] = np.arange(length)
  return {"inputs": inputs, "segment_ids": seg, "positions": pos}


def reference_logits(model, batch):
  """The one-hot dense reference (tests/reference.py) for this module's V and STEM layers."""
  return stem_reference_logits(model, batch, V, STEM)


def test_stem_model_equals_one_hot_dense_reference_values_and_grads():
  scanned, unscanned = _models()
  batch = {k: jnp.asarray(v) for k, v in _batch(np.random.default_rng(0)).items()}
  probe = jnp.asarray(np.random.default_rng(1).normal(size=(3, 10, V)), jnp.float32)

  def value_and_grads(model, fn):
    graphdef, params = nnx.split(model, nnx.Param)
    return jax.jit(jax.value_and_grad(lambda p: jnp.sum(fn(nnx.merge(graphdef, p), batch) * probe)))(params)

  ref_logits = nnx.jit(reference_logits)(unscanned, batch)
  for model in (scanned, unscanned):
    np.testing.assert_allclose(np.asarray(nnx.jit(lambda m, b: m(b))(model, batch)), np.asarray(ref_logits),
                               rtol=1e-4, atol=1e-4)
  ref_v, ref_g = value_and_grads(unscanned, reference_logits)
  un_v, un_g = value_and_grads(unscanned, lambda m, b: m(b))
  sc_v, sc_g = value_and_grads(scanned, lambda m, b: m(b))
  np.testing.assert_allclose(un_v, ref_v, rtol=1e-4)
  np.testing.assert_allclose(sc_v, ref_v, rtol=1e-4)
  ref_g, un_g, sc_g = (nnx.to_pure_dict(g) for g in (ref_g, un_g, sc_g))
  for name in ("stem_tables", "dense_up"):
    np.testing.assert_allclose(un_g["decoder"]["ffn_up"][name], ref_g["decoder"]["ffn_up"][name], rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(sc_g["decoder"]["ffn_up"][name], ref_g["decoder"]["ffn_up"][name], rtol=1e-3, atol=1e-5)
  # Only the rows of tokens in the batch get gradient; the stacked blocks match the unscanned ones.
  seen = np.zeros(V, bool)
  seen[np.asarray(batch["inputs"]).ravel()] = True
  row_grad = np.abs(np.asarray(sc_g["decoder"]["ffn_up"]["stem_tables"])).sum(axis=(0, 2))
  assert (row_grad[~seen] == 0).all() and (row_grad[seen] > 0).all()
  np.testing.assert_allclose(sc_g["decoder"]["blocks"]["mlp"]["w_gate"][2], un_g["decoder"]["blocks"][2]["mlp"]["w_gate"],
                             rtol=1e-3, atol=1e-6)


def test_host_tables_with_rows_fetched_ahead_equal_device_tables():
  scanned, unscanned = _models()
  raw = _batch(np.random.default_rng(2), b=4, length=12)
  batch = {k: jnp.asarray(v) for k, v in raw.items()}
  host = HostStemRows(np.asarray(scanned.decoder.ffn_up.stem_tables[...]))
  try:
    fetched = host.prefetch(raw["inputs"]).result()
    distinct = len(np.unique(raw["inputs"]))
    assert fetched["stem_rows"].shape == (len(STEM), raw["inputs"].size, F) and distinct < raw["inputs"].size
    assert not fetched["stem_rows"][:, distinct:].any()   # one row per distinct token, zeros after
    for model in (scanned, unscanned):
      with_host_rows = nnx.jit(lambda m, b: m(b))(model, {**batch, **fetched})
      np.testing.assert_allclose(np.asarray(with_host_rows), np.asarray(nnx.jit(lambda m, b: m(b))(model, batch)),
                                 rtol=1e-5, atol=1e-5)
    # One token per sequence per step (decoding): the STEM layer's output at step i from the rows
    # fetched for that step's tokens equals the full-sequence layer output at position i.
    blk, layer = unscanned.decoder.blocks[2], 2
    h = jnp.asarray(np.random.default_rng(3).normal(size=(4, 12, D)), jnp.float32)
    full = blk.mlp(h, unscanned.decoder.ffn_up.up_fn(layer, batch)(h))
    pending = host.prefetch(raw["inputs"][:, :1])
    for i in range(12):
      step = pending.result()
      if i + 1 < 12:
        pending = host.prefetch(raw["inputs"][:, i + 1:i + 2])   # next step's rows, while this one runs
      up = scanned.decoder.ffn_up.up_fn(jnp.int32(layer), {"inputs": batch["inputs"][:, i:i + 1], **step})(h[:, i:i + 1])
      np.testing.assert_allclose(np.asarray(blk.mlp(h[:, i:i + 1], up)), np.asarray(full[:, i:i + 1]),
                                 rtol=1e-5, atol=1e-6)
  finally:
    host.close()


def test_tables_are_xavier_normal_without_decay_and_row_sharded():
  cfg = ModelConfig(vocab_size=512, d_model=32, num_layers=3, num_heads=4, num_kv_heads=2, d_ff=256, embedding="stem")
  model = _stem_model(cfg, (1,), 0)
  tables = np.asarray(model.decoder.ffn_up.stem_tables[...])
  assert tables.shape == (1, 512, 256)
  assert abs(tables.std() / np.sqrt(2 / (512 + 256)) - 1) < 0.02
  _, params = nnx.split(model, nnx.Param)
  mask = decay_mask(params)["decoder"]["ffn_up"]
  assert mask["stem_tables"] is False and mask["dense_up"] is True
  spec = parallel.logical_to_spec(params["decoder"]["ffn_up"]["stem_tables"].get_metadata()["logical_axes"])
  assert spec == P(None, ("fsdp", "tensor"), None)
  assert "w_up" not in nnx.to_pure_dict(params)["decoder"]["blocks"]["mlp"]


@pytest.mark.slow
def test_stem_trains_on_the_8_device_mesh(tmp_path):
  data, _ = make_data(str(tmp_path / "data"), docs=150)
  exp = experiment.load(["models/tiny.gin", "methods/stem.gin", "runs/cpu_mesh8.gin"], tiny_bindings(data, 30))
  summary = loop.train(exp, str(tmp_path / "run"), quiet=True)
  losses = read_metrics(str(tmp_path / "run"))
  first, last = (np.mean([losses[s]["loss"] for s in steps]) for steps in ((1, 2, 3), (28, 29, 30)))
  # A threshold (the model's numerics are checked against the one-hot dense reference above).
  # Measured drop 0.97 (SEED 0; 0.71, 0.64, 0.68 with SEED 1-3; 0.02 when it does not learn,
  # learning_rate 1e-9): 0.3 is 2x below the smallest.
  assert last < first - 0.3, (first, last)
  # methods/stem.gin on the 2-layer tiny model: one STEM layer (layer 1), |V| x d_ff offloadable
  # (generate serves it from the device, so it counts resident), and exactly one up-projection
  # fewer than the baseline besides.
  cfg = exp.model
  assert exp.method.layers == (1,)
  base = nnx.eval_shape(lambda: build_model(ModelConfig(**{**cfg.__dict__, "embedding": "token"}), 0))
  base_resident = accounting.count_params(nnx.split(base, nnx.Param)[1])["resident"]
  acct = summary["accounting"]
  assert acct["offloadable_entries"] == cfg.vocab_size * cfg.d_ff and acct["offloaded_entries"] == 0
  assert acct["resident_params"] == base_resident - cfg.d_model * cfg.d_ff + cfg.vocab_size * cfg.d_ff
  assert acct["inference_flops_per_token"] == accounting.main_model_flops(cfg, exp.data.seq_len) - 2 * cfg.d_model * cfg.d_ff


@pytest.mark.parametrize("tables", ["device", "host"])
def test_serve_decode_equals_full_forward(tables):
  """scone_jax.serve's Decoder (KV cache, prefill + one token a step) on the scanned STEM stack
  (dense and STEM layers: lax.cond), with the tables on the device or in host memory
  (StemFeatures: each step's distinct rows fetched on a thread), gives the training logits."""
  rng = np.random.default_rng(5)
  seqs = [rng.integers(3, V, n).astype(np.int32) for n in (9, 5, 12)]
  width = max(len(s) for s in seqs) + 1
  inputs, seg = np.zeros((3, width), np.int32), np.zeros((3, width), np.int32)
  for i, s in enumerate(seqs):
    inputs[i, :len(s) + 1], seg[i, :len(s) + 1] = np.concatenate([[2], s]), 1
  batch = {"inputs": inputs, "segment_ids": seg, "positions": np.tile(np.arange(width, dtype=np.int32), (3, 1))}
  for model in _models()[:1]:
    graphdef, state = nnx.split(model)
    features = TokenFeatures() if tables == "device" else StemFeatures(np.asarray(model.decoder.ffn_up.stem_tables[...]))
    decoder = Decoder(lambda p, g=graphdef: nnx.merge(g, p), state, model.cfg, features)
    got = stepwise_logits(decoder, seqs, [3, 2, 4], 9)
    full = np.asarray(jax.jit(lambda st, b, g=graphdef: nnx.merge(g, st)(b))(state, batch))
    for (row, p), logits in got.items():
      np.testing.assert_allclose(logits, full[row, p], rtol=1e-5, atol=1e-5)
    assert len(got) == sum(len(s) + 2 - p for s, p in zip(seqs, [3, 2, 4]))
