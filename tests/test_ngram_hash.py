"""LongCat hashed n-gram embedding: hash ids against a Python-int brute force (segments, special
ids, large ids and sizes; host int64 and device int32), the size rule and its validation, distinct
tables really differ, the embedding against a dense reference, decode from the last N-1 ids
equals the full sequence, and training on the 8-device mesh."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from scone_jax import experiment
from scone_jax.config import DataConfig, ModelConfig
from scone_jax.errors import UserError
from scone_jax.methods import ngram_hash
from scone_jax.methods.ngram_hash import NgramFeatures, NgramHash, NgramHashConfig, hash_rows_device
from scone_jax.models import accounting
from scone_jax.serve.decode import Decoder
from scone_jax.train import loop
from scone_jax.train.optimizer import decay_mask
from tests.helpers import make_data, read_metrics, stepwise_logits, tiny_bindings
from tests.reference import brute_force_ngram_ids

SPECIAL = (0, 1, 2)


def _packed_row(rng, vocab, length):
  """A packed row: documents of random lengths starting with BOS (2), then padding."""
  inputs, seg, s = [], [], 1
  while len(inputs) < length - 3:
    doc = [2] + list(rng.integers(3, vocab, rng.integers(1, 9)))
    inputs += doc
    seg += [s] * len(doc)
    s += 1
  inputs, seg = inputs[:length - 3], seg[:length - 3]
  return np.array(inputs + [0, 0, 0], np.int64), np.array(seg + [0, 0, 0], np.int32)


@pytest.mark.parametrize("vocab,sizes,max_n", [
    (97, (301, 307, 311, 313, 317, 331), 4),                      # small: many wrap-arounds
    (2_000_000_011, (1_073_741_789, 999_999_937), 3),   # large ids and sizes: z |V|^2 ~ 2^92
])
def test_hash_ids_equal_brute_force_host_and_device(vocab, sizes, max_n):
  rng = np.random.default_rng(0)
  cfg = NgramHashConfig(max_n=max_n, tables_per_order=len(sizes) // (max_n - 1), sizes=sizes,
                        near_multiple_tolerance=0.0)
  layout = ngram_hash.table_layout(cfg, vocab, SPECIAL)
  for _ in range(3):
    inputs, seg = _packed_row(rng, vocab, 40)
    # Make some ids huge: the products z * |V|^j overflow int64 without reduction.
    big = rng.random(len(inputs)) < 0.5
    inputs = np.where(big & (inputs > 2), vocab - 1 - rng.integers(0, 1000, len(inputs)), inputs)
    hist = ngram_hash.history(inputs, seg, max_n, SPECIAL)
    expected = np.array(brute_force_ngram_ids(layout, inputs, seg), dtype=object)
    got = ngram_hash.hash_ids(layout, hist)
    assert got.shape == (len(inputs), layout.num_tables)
    np.testing.assert_array_equal(got.astype(object), expected)
    rows = ngram_hash.NgramRows(layout)({"inputs": inputs.astype(np.int32), "segment_ids": seg})["ngram_rows"]
    np.testing.assert_array_equal(rows, got + layout.offsets)
    # Device: int32 only, same ids (the history still holds the raw special ids).
    raw = np.zeros_like(hist)
    raw[0] = inputs
    for j in range(1, max_n):
      raw[j, j:] = np.where(seg[j:] == seg[:-j], inputs[:-j], 0)
    dev = hash_rows_device(layout, jnp.asarray(raw, jnp.int32))
    assert dev.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(dev), rows)


def test_history_stops_at_document_boundaries():
  inputs = np.array([2, 10, 11, 12, 2, 20, 21, 0], np.int32)
  seg = np.array([1, 1, 1, 1, 2, 2, 2, 0], np.int32)
  hist = ngram_hash.history(inputs, seg, 3, SPECIAL)
  np.testing.assert_array_equal(hist[0], [0, 10, 11, 12, 0, 20, 21, 0])
  np.testing.assert_array_equal(hist[1], [0, 0, 10, 11, 0, 0, 20, 0])   # BOS is 0, never 12 before 20
  np.testing.assert_array_equal(hist[2], [0, 0, 0, 10, 0, 0, 0, 0])


def test_sizes_follow_the_released_rule_and_are_validated():
  v = 4096
  layout = ngram_hash.table_layout(NgramHashConfig(max_n=4, tables_per_order=4, ratio=4.5), v)
  m = int(4.5 * v)
  assert layout.sizes == tuple(m + 2 * t + 1 for t in range(12))
  assert layout.orders == (2,) * 4 + (3,) * 4 + (4,) * 4
  assert layout.total_rows % ngram_hash.ROW_ALIGN == 0 and layout.total_rows >= sum(layout.sizes)

  def refused(match, **kw):
    with pytest.raises(UserError, match=match):
      ngram_hash.table_layout(NgramHashConfig(**{"max_n": 2, "tables_per_order": 2, **kw}), v)

  refused("equal sizes", sizes=(9001, 9001))
  refused("within 1.00% of 3 x", sizes=(9001, 3 * v + 7))        # 7 rows above 3|V|
  refused("within 1.00% of 2 x", sizes=(9001, 2 * v - 39))       # 39 < 40.96 rows below
  ngram_hash.table_layout(NgramHashConfig(max_n=2, tables_per_order=2, sizes=(9001, 2 * v - 41)), v)
  refused("reach only", sizes=(9001, 3 * v + 1024))               # gcd 1024: 13 rows per token
  refused("entries", sizes=(9001,))
  refused("2\\^30", sizes=(9001, 2 ** 30 + 1))
  refused("ratio", ratio=0.0)
  # The released layout (integral ratio 78 at |V| = 131072: sizes 1..23 rows above 78|V|) is a
  # near-multiple by the default tolerance; tolerance 0 accepts it and still refuses exact multiples.
  released = NgramHashConfig(max_n=4, tables_per_order=4, ratio=78.0)
  with pytest.raises(UserError, match="near-multiples"):
    ngram_hash.table_layout(released, 131072)
  exact = NgramHashConfig(max_n=4, tables_per_order=4, ratio=78.0, near_multiple_tolerance=0.0)
  assert ngram_hash.table_layout(exact, 131072).sizes[0] == 78 * 131072 + 1
  with pytest.raises(UserError):
    ngram_hash.table_layout(NgramHashConfig(max_n=2, tables_per_order=2, sizes=(9001, 5 * v),
                                           near_multiple_tolerance=0.0), v)
  # The sub-table width must divide d (or be given).
  cfg = ModelConfig(vocab_size=v, d_model=64, num_layers=1, num_heads=4, num_kv_heads=2, d_ff=64, embedding="ngram_hash")
  with pytest.raises(UserError, match="sub_dim"):
    NgramHash(cfg, DataConfig(), released, ngram_hash.table_layout(exact, 131072)).build_model(0)


def test_distinct_tables_really_differ():
  v = 64
  layout = ngram_hash.table_layout(NgramHashConfig(max_n=3, tables_per_order=3, ratio=4.5), v, SPECIAL)
  # Every bigram over the vocabulary: the tables of one order split them into different buckets.
  a, b = np.meshgrid(np.arange(v), np.arange(v), indexing="ij")
  hist = np.stack([b.ravel(), a.ravel(), np.zeros(v * v, np.int64)])
  ids = ngram_hash.hash_ids(layout, hist)
  for s in range(3):
    for t in range(s + 1, 3):
      same_s = ids[:, s][:, None] == ids[:, s][None, :]
      same_t = ids[:, t][:, None] == ids[:, t][None, :]
      collide_s = same_s.sum() - v * v
      both = (same_s & same_t).sum() - v * v
      assert collide_s > 0 and both < collide_s / 10, (s, t, collide_s, both)
  # And the model holds them as disjoint row ranges with different values.
  cfg = ModelConfig(vocab_size=v, d_model=48, num_layers=1, num_heads=4, num_kv_heads=2, d_ff=64, embedding="ngram_hash")
  model = NgramHash(cfg, DataConfig(), NgramHashConfig(max_n=3, tables_per_order=3), layout).build_model(0)
  table = np.asarray(model.input_embedding.ngram_tables[...])
  starts = list(layout.offsets) + [sum(layout.sizes)]
  firsts = [table[starts[t]:starts[t] + 5] for t in range(layout.num_tables)]
  for s in range(layout.num_tables):
    for t in range(s + 1, layout.num_tables):
      assert not np.allclose(firsts[s], firsts[t])


def _model(amplification="none", d=48, v=64):
  ncfg = NgramHashConfig(max_n=4, tables_per_order=2, ratio=2.5, amplification=amplification)
  cfg = ModelConfig(vocab_size=v, d_model=d, num_layers=1, num_heads=4, num_kv_heads=2, d_ff=64, embedding="ngram_hash")
  layout = ngram_hash.table_layout(ncfg, v, SPECIAL)
  return NgramHash(cfg, DataConfig(), ncfg, layout).build_model(0), layout


def _embedded(model, layout, rng, count: int, length: int):
  """`count` random packed rows of `length`: (inputs [B, L], their hashed rows [B, L, J], the
  model's input embedding of them)."""
  rows_in = [_packed_row(rng, 64, length) for _ in range(count)]
  inputs = np.stack([r[0] for r in rows_in]).astype(np.int32)
  seg = np.stack([r[1] for r in rows_in])
  rows = np.stack([ngram_hash.NgramRows(layout)({"inputs": i, "segment_ids": s})["ngram_rows"] for i, s in zip(inputs, seg)])
  return inputs, rows, np.asarray(model.embed({"inputs": jnp.asarray(inputs), "ngram_rows": jnp.asarray(rows)}))


@pytest.mark.parametrize("amplification", ["none", "sqrt_d", "layernorm"])
def test_embedding_equals_dense_reference(amplification):
  model, layout = _model(amplification)
  inputs, rows, got = _embedded(model, layout, np.random.default_rng(1), 2, 24)
  # Reference: one table and one projection per (n, k), in float64.
  emb = model.input_embedding
  T = np.asarray(model.token_embed[...], np.float64)
  E = np.asarray(emb.ngram_tables[...], np.float64)
  W = np.asarray(emb.ngram_proj[...], np.float64)
  expected = T[inputs].copy()
  for t in range(layout.num_tables):
    table_t = E[layout.offsets[t]:layout.offsets[t] + layout.sizes[t]]
    expected += table_t[rows[..., t] - layout.offsets[t]] @ W[t]
  expected /= 1 + layout.num_tables
  if amplification == "sqrt_d":   # T and E_t rows N(0, 1), W_t LeCun: every term RMS 1, so 1 + J of them
    expected *= np.sqrt(1 + layout.num_tables)
  elif amplification == "layernorm":
    mu, var = expected.mean(-1, keepdims=True), expected.var(-1, keepdims=True)
    expected = (expected - mu) / np.sqrt(var + 1e-6) * np.asarray(emb.amp_scale[...]) + np.asarray(emb.amp_bias[...])
  np.testing.assert_allclose(got, expected, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("amplification, expected", [("none", "shrunk"), ("sqrt_d", 1.0), ("layernorm", 1.0)])
def test_amplification_restores_the_token_embeddings_scale(amplification, expected):
  """At initialisation (real random init, J = 6 tables, d = 128): the plain average has about
  1 / sqrt(1 + J) of T's RMS; `sqrt_d` and `layernorm` bring it back (the paper's literal x sqrt(d)
  would give sqrt(192 / 7) = 5.2x)."""
  model, layout = _model(amplification, d=192)
  _, _, e = _embedded(model, layout, np.random.default_rng(4), 4, 64)
  token_rms = np.sqrt(np.mean(np.square(np.asarray(model.token_embed[...]))))
  ratio = np.sqrt(np.mean(np.square(e))) / token_rms
  target = 1 / np.sqrt(1 + layout.num_tables) if expected == "shrunk" else expected
  assert abs(ratio / target - 1) < 0.15, (ratio, target)


def test_decode_from_the_last_ids_equals_the_full_sequence():
  model, layout = _model()
  rng = np.random.default_rng(2)
  b, length, n = 3, 20, layout.max_n
  rows_in = [_packed_row(rng, 64, length) for _ in range(b)]
  inputs = np.stack([r[0] for r in rows_in]).astype(np.int32)
  seg = np.stack([r[1] for r in rows_in])
  full_rows = np.stack([ngram_hash.NgramRows(layout)({"inputs": i, "segment_ids": s})["ngram_rows"] for i, s in zip(inputs, seg)])
  emb = model.input_embedding
  full = np.asarray(model.embed({"inputs": jnp.asarray(inputs), "ngram_rows": jnp.asarray(full_rows)}))
  step = jax.jit(emb.decode_rows)
  recent = jnp.zeros((b, n - 1), jnp.int32)   # the decode state: last N-1 ids of each sequence
  for i in range(length):
    # A new document (or padding) starts its history afresh.
    fresh = (i == 0) | (seg[:, i] != seg[:, max(i - 1, 0)])
    recent = jnp.where(jnp.asarray(fresh)[:, None], 0, recent)
    rows, recent = step(recent, jnp.asarray(inputs[:, i]))
    np.testing.assert_array_equal(np.asarray(rows), full_rows[:, i])
    one = np.asarray(emb.combine(model.embed_tokens(jnp.asarray(inputs[:, i:i + 1])), rows[:, None]))
    np.testing.assert_allclose(one[:, 0], full[:, i], rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_ngram_hash_trains_on_the_8_device_mesh(tmp_path):
  data, _ = make_data(str(tmp_path / "data"), docs=150)
  exp = experiment.load(["models/tiny.gin", "methods/ngram.gin", "runs/cpu_mesh8.gin"], tiny_bindings(data, 30))
  summary = loop.train(exp, str(tmp_path / "run"), quiet=True)
  losses = read_metrics(str(tmp_path / "run"))
  # The average starts closer to uniform than T[x] alone (first 4.58-4.82 against ln 64 = 4.16;
  # the baseline starts near 6). A threshold (the embedding is checked against the dense reference
  # above). Measured drop with methods/ngram.gin's sqrt_d amplification 0.38 (SEED 0; 0.45, 0.48,
  # 0.54 with SEED 1-3; -0.12 when it does not learn, learning_rate 1e-9; without amplification it
  # was 0.64-0.80): 0.19 is 2x below the smallest. The last loss (4.18-4.37) is too near ln 64 to
  # test it against uniform at 30 steps.
  first, last = (np.mean([losses[s]["loss"] for s in steps]) for steps in ((1, 2, 3), (28, 29, 30)))
  assert last < first - 0.19, (first, last)
  layout, d_sub = exp.method.layout, exp.model.d_model // 8
  acct = summary["accounting"]
  # The tables are offloadable; generate serves them from the device, so they count resident.
  assert acct["offloadable_entries"] == layout.total_rows * d_sub and acct["offloaded_entries"] == 0
  assert acct["training_params"] == 0
  model = nnx.eval_shape(exp.build_model)
  _, params = nnx.split(model, nnx.Param)
  groups = accounting.count_params(params, NgramHash.training_only, NgramHash.offloaded)
  assert groups["resident"] + groups["offloaded"] == acct["resident_params"]
  mask = decay_mask(params)["input_embedding"]
  assert mask["ngram_tables"] is False and mask["ngram_proj"] is True
  # Row-sharded through its own logical axis on the mesh.
  from scone_jax import parallel
  assert parallel.logical_to_spec(params["input_embedding"]["ngram_tables"].get_metadata()["logical_axes"]) == \
      P(("fsdp", "tensor"), None)


def test_serve_decode_equals_full_forward():
  """scone_jax.serve's Decoder (KV cache, prefill + one token a step) with NgramFeatures hashing
  each new token from the last N ids gives the logits of the training forward pass."""
  model, layout = _model()
  graphdef, state = nnx.split(model)
  decoder = Decoder(lambda p: nnx.merge(graphdef, p), state, model.cfg, NgramFeatures(layout))
  rng = np.random.default_rng(4)
  seqs = [rng.integers(3, 64, n).astype(np.int32) for n in (10, 6, 13)]
  got = stepwise_logits(decoder, seqs, [4, 2, 5], 9)
  # Reference: whole sequences ([BOS] + seq, padding after) with pipeline-made rows.
  width = max(len(s) for s in seqs) + 1
  inputs, seg = np.zeros((3, width), np.int32), np.zeros((3, width), np.int32)
  for i, s in enumerate(seqs):
    inputs[i, :len(s) + 1], seg[i, :len(s) + 1] = np.concatenate([[2], s]), 1
  rows = np.stack([ngram_hash.NgramRows(layout)({"inputs": x, "segment_ids": g})["ngram_rows"] for x, g in zip(inputs, seg)])
  batch = {"inputs": inputs, "segment_ids": seg, "ngram_rows": rows,
           "positions": np.tile(np.arange(width, dtype=np.int32), (3, 1))}
  full = np.asarray(jax.jit(lambda st, b: nnx.merge(graphdef, st)(b))(state, batch))
  for (row, p), logits in got.items():
    np.testing.assert_allclose(logits, full[row, p], rtol=1e-5, atol=1e-5)
  assert len(got) == sum(len(s) + 2 - p for s, p in zip(seqs, [4, 2, 5]))
