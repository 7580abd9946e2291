"""Decoding: sampling against a brute-force filter; the KV cache is a donated pytree; step-by-step
logits equal a full forward pass (baseline, SCONE with A_f, SCONE from RAM and disk stores) for a
batch of prompts of different lengths; greedy tokens are the same from every f-gram source."""
from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from scone_jax import parallel
from scone_jax.config import DataConfig, MeshConfig, ModelConfig, TrainConfig
from scone_jax.export import layout as L
from scone_jax.export.manifest import Identity
from scone_jax.export.writer import AfRows, export_table
from scone_jax.fgram.matcher import ExactMatcher
from scone_jax.fgram.vocab import FgramMeta, FgramVocab
from scone_jax.methods.base import TokenFeatures
from scone_jax.methods.scone import (
  DistinctFgrams,
  FgramConfig,
  History,
  MatchDocument,
  PackedFgrams,
  Scone,
)
from scone_jax.models import build_model
from scone_jax.models.kv_cache import KVCache
from scone_jax.serve.decode import Decoder
from scone_jax.serve.sampling import Sampling, filter_logits, sample
from scone_jax.serve.store import open_store
from scone_jax.train.restore import params_sha256
from scone_jax.train.state import Trainer
from tests.helpers import stepwise_logits
from tests.reference import reference_filter

VOCAB, K = 40, 3


@pytest.mark.parametrize("s", [Sampling(1.0, 5, 1.0), Sampling(0.7, 0, 0.5), Sampling(1.3, 8, 0.8), Sampling(2.0, 0, 1.0)])
def test_sampling_keeps_exactly_the_reference_set(s):
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(6, 30)).astype(np.float32) * 3
  filtered = np.asarray(filter_logits(logits, s))
  for row, f in zip(logits, filtered):
    assert set(np.flatnonzero(np.isfinite(f))) == reference_filter(row, s)
    np.testing.assert_allclose(f[np.isfinite(f)], row[np.isfinite(f)] / s.temperature, rtol=1e-6)
  allowed = [reference_filter(row, s) for row in logits]
  draws = np.stack([np.asarray(sample(logits, jax.random.key(i), s)) for i in range(40)])
  assert all(int(t) in allowed[b] for b in range(6) for t in draws[:, b])
  again = np.stack([np.asarray(sample(logits, jax.random.key(i), s)) for i in range(40)])
  np.testing.assert_array_equal(draws, again)   # same key, same tokens
  np.testing.assert_array_equal(np.asarray(sample(logits, jax.random.key(0), Sampling())), logits.argmax(-1))


def _vocab(rng) -> FgramVocab:
  grams = set()
  while len(grams) < 30:
    g = tuple(int(t) for t in rng.integers(4, VOCAB, size=rng.integers(2, K + 1)))
    for a in range(len(g)):   # closed under sub-n-grams of length >= 2
      for b in range(a + 2, len(g) + 1):
        grams.add(g[a:b])
  grams = sorted(grams, key=lambda g: (len(g), g))
  return FgramVocab.from_tuples(grams, [1] * len(grams), FgramMeta(K, len(grams), 1, 0, "", len(grams), VOCAB))


def _sequences(rng, vocab: FgramVocab, lengths) -> list[np.ndarray]:
  """Token sequences made of f-grams and single tokens, so most positions match."""
  grams = vocab.as_tuples()
  out = []
  for n in lengths:
    seq = []
    while len(seq) < n:
      seq += list(grams[rng.integers(len(grams))]) if rng.random() < 0.7 else [int(rng.integers(4, VOCAB))]
    out.append(np.array(seq[:n], np.int32))
  return out


@pytest.fixture(scope="module")
def scone(tmp_path_factory):
  """A randomly initialised SCONE model on one device, its f-grams, and its table exported to a
  file store and to the in-memory kvstore."""
  rng = np.random.default_rng(0)
  vocab = _vocab(rng)
  cfg = ModelConfig(vocab_size=VOCAB, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, d_ff=64,
                    embedding="scone", remat_policy="none")
  fcfg = FgramConfig(num_layers=1)
  mesh = parallel.make_mesh(MeshConfig(1, 1, 1), jax.devices()[:1])
  method = Scone(cfg, DataConfig(), fcfg, vocab)
  trainer = Trainer(cfg, TrainConfig(), mesh, lambda: method.build_model(0))
  params = trainer.init().params
  tokens, lengths = vocab.token_matrix()
  identity = Identity(params_sha256(params), "fgrams-test", len(vocab), cfg.d_model, K)
  lay = L.Layout(len(vocab), cfg.d_model, K, "float32", 16, 16)
  urls = {"disk": str(tmp_path_factory.mktemp("store") / "s"), "remote": "memory://test_decode/"}
  rows_fn = AfRows(trainer, params, "float32")
  for url in urls.values():
    assert export_table(url, lay, tokens, lengths, rows_fn, identity)["complete"]
  return dict(vocab=vocab, cfg=cfg, method=method, trainer=trainer, params=params, identity=identity, urls=urls)


def _features(scone, source: str):
  if source == "none":
    return scone["method"].decode_features()
  tier, url = ("ram", scone["urls"]["disk"]) if source == "ram" else (source, scone["urls"][source])
  return scone["method"].decode_features(open_store(url, tier, expected=scone["identity"]))


def _full_logits(model, seqs, vocab: FgramVocab | None) -> np.ndarray:
  """Reference: the training forward pass over whole sequences ([BOS] + seq, one row each,
  padding after), one jitted call. Returns logits [B, L, V]."""
  width = max(len(s) for s in seqs) + 1
  x = np.zeros((len(seqs), width), np.int32)
  segments = np.zeros_like(x)
  for i, s in enumerate(seqs):
    x[i, :len(s) + 1] = np.concatenate([[2], s])
    segments[i, :len(s) + 1] = 1
  batch = {"inputs": x, "positions": np.tile(np.arange(width, dtype=np.int32), (len(seqs), 1)), "segment_ids": segments}
  if vocab is not None:   # each sequence is one whole document: matched as the pipeline matches one
    match, history = MatchDocument(ExactMatcher(vocab)), History(vocab.meta.max_n)
    batch["match_len"] = np.ones_like(x)
    batch["history"] = np.full(x.shape + (vocab.meta.max_n - 1,), -1, np.int32)
    for i, s in enumerate(seqs):
      doc = history(match({"inputs": x[i, :len(s) + 1]}))
      batch["match_len"][i, :len(s) + 1], batch["history"][i, :len(s) + 1] = doc["match_len"], doc["history"]
    batch = DistinctFgrams(PackedFgrams(vocab.meta.max_n), planned=x.size)(batch)
    batch.pop("stat_train_only_work")
  graphdef, state = nnx.split(model)
  return np.asarray(jax.jit(lambda st, b: nnx.merge(graphdef, st)(b))(state, batch))


@pytest.mark.parametrize("scan", [True, False])
def test_baseline_stepwise_logits_equal_full_forward(scan):
  cfg = ModelConfig(vocab_size=VOCAB, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, d_ff=64,
                    scan_layers=scan, remat_policy="none")
  model = build_model(cfg, 1)
  graphdef, params = nnx.split(model)
  decoder = Decoder(lambda p: nnx.merge(graphdef, p), params, cfg, TokenFeatures())
  rng = np.random.default_rng(1)
  seqs = [rng.integers(4, VOCAB, n).astype(np.int32) for n in (10, 6, 13)]
  got = stepwise_logits(decoder, seqs, [4, 2, 5], 9)
  full = _full_logits(model, seqs, None)
  for (row, p), logits in got.items():
    np.testing.assert_allclose(logits, full[row, p], rtol=1e-5, atol=1e-5)
  assert len(got) == sum(len(s) + 2 - p for s, p in zip(seqs, [4, 2, 5]))   # every position checked


def test_kv_cache_is_a_pytree():
  cfg = ModelConfig(vocab_size=VOCAB, d_model=32, num_layers=3, num_heads=4, num_kv_heads=2, d_ff=64)
  cache = KVCache.init(cfg, 2, 16)
  assert len(jax.tree.leaves(cache)) == 3 and cache.k.shape == (3, 2, 16, 2, 8) and cache.max_len == 16
  doubled = jax.tree.map(lambda x: x + 1, cache)
  assert isinstance(doubled, KVCache) and int(doubled.lengths[0]) == 1


@pytest.mark.parametrize("source", ["none", "ram", "disk", "remote"])
def test_scone_stepwise_logits_equal_full_forward(scone, source):
  rng = np.random.default_rng(2)
  seqs = _sequences(rng, scone["vocab"], (12, 7, 10))
  model = scone["trainer"].model(scone["params"])
  decoder = Decoder(scone["trainer"].model, scone["params"], scone["cfg"], _features(scone, source))
  got = stepwise_logits(decoder, seqs, [5, 2, 6], 11)
  full = _full_logits(model, seqs, scone["vocab"])
  for (row, p), logits in got.items():
    np.testing.assert_allclose(logits, full[row, p], rtol=1e-5, atol=1e-5)
  # The sequences really exercise f-gram rows in the decode steps.
  fgram_id, _ = ExactMatcher(scone["vocab"]).match(np.concatenate([[2], seqs[0]])[None])
  assert (fgram_id[0, 5:] >= 0).sum() >= 3


def test_greedy_tokens_are_the_same_from_every_source(scone):
  rng = np.random.default_rng(3)
  prompts = _sequences(rng, scone["vocab"], (5, 2, 8))
  out = {}
  for source in ("none", "ram", "disk", "remote"):
    decoder = Decoder(scone["trainer"].model, scone["params"], scone["cfg"], _features(scone, source))
    forced = np.stack(_sequences(rng, scone["vocab"], (10, 10, 10))) if source == "none" else out["forced"]
    out["forced"] = forced
    # Greedy free-running, and teacher-forced through f-gram-rich text (rows fetched every step).
    out[source] = (decoder.generate(prompts, max_new_tokens=10, bos_id=2, eos_id=1),
                   decoder.generate(prompts, max_new_tokens=10, bos_id=2, eos_id=1, force_tokens=forced))
  for source in ("ram", "disk", "remote"):
    assert out[source] == out["none"], source
  assert all(len(t) == 10 or t[-1:] != [1] for t in out["none"][0])
