"""Serving a SCONE run trained on a small real corpus: the store tiers return the stored rows; the
decode-time lookup finds the brute-force longest match; `eval --store` equals `eval --store none`;
`scone-jax generate` gives the same greedy text from the RAM tier, the disk tier and A_f."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from scone_jax.cli import main
from scone_jax.data.tokenizer import Tokenizer
from scone_jax.export.manifest import identity_of
from scone_jax.methods.scone import DistinctFgrams, StoreRows
from scone_jax.serve.store import RamStore, open_store
from scone_jax.train.restore import load_run
from tests.helpers import TINY_ROWS_PER_SHARD, WORDS, fgram_batch
from tests.reference import brute_force_suffix_match

# eval and generate in-process over the shared run (several compiles each): slow.
pytestmark = pytest.mark.slow

PROMPTS = ["the cat sat on", "my friend looked at the red", "a small"]


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_scone_run):
  """The suite's tiny SCONE run (conftest.py: prepare a jsonl corpus -> fgrams build -> train ->
  export float32), read-only; `tmp` is this module's."""
  return {"tmp": tmp_path_factory.mktemp("serve"), "data": tiny_scone_run["data"], "run": tiny_scone_run["workdir"],
          "store": tiny_scone_run["store"], "loaded": load_run(tiny_scone_run["workdir"])}


def test_every_tier_fetches_the_stored_rows(served):
  loaded = served["loaded"]
  ram = open_store(served["store"], "ram", expected=identity_of(loaded))
  assert isinstance(ram, RamStore)
  url = "memory://test_serve/store/"
  # The shared store's block size: A_f over blocks of the same size gives the same bits.
  assert main(["export", "--dtype", "float32", "--workdir", served["run"], "--out", url, "--rows_per_shard", str(TINY_ROWS_PER_SHARD)]) == 0
  ids = np.random.default_rng(1).permutation(len(ram.embeddings))[:40]
  for tier, where in (("disk", served["store"]), ("remote", url)):
    store = open_store(where, tier, expected=identity_of(loaded), cache_bytes=1 << 16)
    np.testing.assert_array_equal(store.fetch(ids).result(), ram.embeddings[ids])
    assert store.fetch(np.array([], np.int64)).result().shape == (0, 32)
  # The eval feature: the batch's distinct f-grams, fetched once each, indexed per position.
  fgram_id = np.array([[ids[0], -1, ids[1]], [ids[1], ids[0], -1]])
  grams = [tuple(int(t) for t in row if t >= 0) for row in ram.fgram_tokens]
  base = {"inputs": np.zeros((2, 3), np.int32), "segment_ids": np.ones((2, 3), np.int32)}
  batch = fgram_batch(base, grams, fgram_id, ram.fgram_tokens.shape[1])
  batch = DistinctFgrams(StoreRows(ram), planned=8, process_index=1)(batch)   # list offset 1 x 8
  index = batch["fgram_index"]
  assert (index[fgram_id < 0] == -1).all()
  np.testing.assert_array_equal(batch["unique_rows"][index[fgram_id >= 0] - 8], ram.embeddings[fgram_id[fgram_id >= 0]])


def test_lookup_finds_the_brute_force_match(served):
  loaded = served["loaded"]
  vocab = loaded.exp.method.fgram_vocab
  table = {g: r for r, g in enumerate(vocab.as_tuples())}
  store = open_store(served["store"], "disk", expected=identity_of(loaded))
  ram = open_store(served["store"], "ram", expected=identity_of(loaded))
  features = loaded.exp.method.decode_features(store)
  tok = Tokenizer(os.path.join(served["data"], "vocab.model"))
  docs = [[2] + tok.encode(f"{s} {v} {o}. the cat") for s, v, o in zip(*WORDS.values())]
  hits = 0
  for end in range(1, min(map(len, docs))):
    history = np.full((len(docs), 3), -1, np.int64)
    for i, d in enumerate(docs):
      tail = d[max(0, end - 2):end + 1]
      history[i, 3 - len(tail):] = tail
    got = features.step(history).result()
    want = [brute_force_suffix_match(d[:end + 1], table) for d in docs]
    index = got["fgram_index"][:, 0]
    assert list(np.where(index >= 0, 0, -1)) == [0 if w >= 0 else -1 for w in want]
    for i, w in enumerate(want):
      if w >= 0:
        np.testing.assert_array_equal(got["unique_rows"][index[i]], ram.embeddings[w])
        hits += 1
  assert hits > 20
  # A whole right-padded prompt batch at once.
  width = max(map(len, docs))
  padded = np.zeros((len(docs), width), np.int32)
  valid = np.zeros_like(padded, bool)
  for i, d in enumerate(docs):
    padded[i, :len(d)], valid[i, :len(d)] = d, True
  got = features.prompt(padded, valid).result()
  for i, d in enumerate(docs):
    for p in range(width):
      w = brute_force_suffix_match(d[:p + 1], table) if p < len(d) else -1
      assert (got["fgram_index"][i, p] >= 0) == (w >= 0)
      if w >= 0:
        np.testing.assert_array_equal(got["unique_rows"][got["fgram_index"][i, p]], ram.embeddings[w])


def _json_out(capsys, argv: list[str]):
  assert main(argv) == 0, capsys.readouterr().err
  return json.loads(capsys.readouterr().out)


def test_eval_with_a_float32_store_equals_eval_with_af(served, capsys):
  base = ["eval", "--workdir", served["run"], "--format", "json"]
  with_af = _json_out(capsys, base + ["--store", "none"])
  for tier in ("ram", "disk"):
    with_store = _json_out(capsys, base + ["--store", served["store"], "--tier", tier])
    assert with_store["tokens"] == with_af["tokens"] > 0
    assert abs(with_store["perplexity"] / with_af["perplexity"] - 1) < 1e-5


def test_generate_gives_the_same_greedy_text_from_every_source(served, capsys):
  tok = Tokenizer(os.path.join(served["data"], "vocab.model"))
  base = ["generate", "--workdir", served["run"], "--max_new_tokens", "12", "--format", "json"]
  prompts = [a for p in PROMPTS for a in ("--prompt", p)]
  outs = {source: _json_out(capsys, base + prompts + extra) for source, extra in (
      ("none", ["--store", "none"]), ("ram", ["--store", served["store"], "--tier", "ram"]),
      ("disk", ["--store", served["store"], "--tier", "disk"]))}
  assert outs["ram"] == outs["none"] and outs["disk"] == outs["none"]
  assert len(outs["none"]) == len(PROMPTS)
  for r in outs["none"]:
    assert 0 < len(r["tokens"]) <= 12 and r["text"] == tok.decode(r["tokens"])
  sampled = _json_out(capsys, base + ["--prompt", PROMPTS[1], "--temperature", "1.0", "--top_k", "20",
                                       "--top_p", "0.9", "--seed", "7"])
  assert 0 < len(sampled["tokens"]) <= 12 and sampled["text"] == tok.decode(sampled["tokens"])
  assert main(["generate", "--workdir", served["run"], "--prompt", "x", "--store", str(served["tmp"])]) == 2
  assert "no manifest.json" in capsys.readouterr().err
