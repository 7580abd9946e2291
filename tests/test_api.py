"""The Python API (scone_jax/api.py): README's example runs; generate is what `scone-jax generate`
prints; score and embed_fgrams equal the plain-numpy reference model of the same checkpoint."""
from __future__ import annotations

import contextlib
import io
import json
import os
import re

import jax
import numpy as np
import pytest

import scone_jax
from scone_jax.cli import main
from scone_jax.errors import UserError
from tests.reference import np_fgram_embedding, np_forward, np_params

pytestmark = pytest.mark.slow   # each test loads and compiles the shared tiny run (make test-fast: 3 min)
README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
PROMPTS = ["the cat sat on", "my friend looked at the red"]


@pytest.fixture(scope="module")
def model(tiny_scone_run):
  return scone_jax.load(tiny_scone_run["workdir"])


@pytest.fixture(scope="module")
def reference(model):
  """The checkpoint as float64 numpy and V_f in id order (the reference model's inputs)."""
  return {"params": np_params(jax.device_get(model.run.params)), "cfg": model.run.exp.model,
          "fgrams": model.run.exp.method.fgram_vocab.as_tuples()}


def test_the_readme_example_runs(tiny_scone_run):
  text = open(README).read()
  block = re.search(r"<!-- api-example -->\n```python\n(.*?)```", text, re.S).group(1)
  assert 'scone_jax.load("demo_out/run_scone", store="demo_out/store"' in block   # what make demo writes
  block = block.replace("demo_out/run_scone", tiny_scone_run["workdir"]).replace("demo_out/store", tiny_scone_run["store"])
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    exec(compile(block, "README.md", "exec"), {})
  lines = out.getvalue().splitlines()   # the completion (any text, maybe empty), the scores, the shape
  assert len(lines) >= 3 and lines[-2].startswith("[") and lines[-1] == "(1, 32)", lines


def test_generate_prints_what_the_command_prints(model, tiny_scone_run, capsys):
  got = model.generate(PROMPTS, max_new_tokens=8)
  capsys.readouterr()
  assert main(["generate", "--workdir", tiny_scone_run["workdir"], *[w for p in PROMPTS for w in ("--prompt", p)],
               "--max_new_tokens", "8", "--format", "json"]) == 0
  printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert got == [r["text"] for r in printed]
  assert model.generate(PROMPTS[0], max_new_tokens=8) == got[0]   # one text in, one text out
  ids = [model.tokenizer.encode(p) for p in PROMPTS]
  assert model.generate(ids, max_new_tokens=8) == [r["tokens"] for r in printed]
  # From the exported store (float32): the same greedy completions as from A_f.
  stored = scone_jax.load(tiny_scone_run["workdir"], store=tiny_scone_run["store"], tier="disk")
  assert stored.generate(PROMPTS, max_new_tokens=8) == got


def test_score_is_the_reference_log_likelihood(model, reference):
  texts = ["the cat sat on the mat.", "a small dog"]
  got = model.score(texts)
  bos = model.run.exp.data_meta.bos_id
  for text, value in zip(texts, got):
    ids = model.tokenizer.encode(text)
    logits = np_forward(reference["params"], reference["cfg"], [bos, *ids], reference["fgrams"])[0]
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
    want = sum(logp[i, t] for i, t in enumerate(ids))   # position i predicts token i (EOS not scored)
    np.testing.assert_allclose(value, want, rtol=2e-4)
  np.testing.assert_array_equal(model.score([model.tokenizer.encode(t) for t in texts]), got)


def test_embed_fgrams_are_the_reference_rows_and_the_stored_rows(model, reference, tiny_scone_run):
  fgrams = reference["fgrams"]
  picked = [fgrams[0], fgrams[1], fgrams[-1]] + [g for g in fgrams if len(g) == 3][:2]
  rows = model.embed_fgrams(picked)
  assert rows.shape == (len(picked), reference["cfg"].d_model) and rows.dtype == np.float32
  for gram, row in zip(picked, rows):
    np.testing.assert_allclose(row, np_fgram_embedding(reference["params"], reference["cfg"], gram), rtol=2e-4, atol=2e-5)
  from scone_jax.serve.store import open_store
  table = open_store(tiny_scone_run["store"], "ram").embeddings   # exported in float32 by the fixture
  ids = [fgrams.index(g) for g in picked]
  np.testing.assert_allclose(rows, table[ids], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("call,words", [
    (lambda m: m.score([""]), "no tokens"),
    (lambda m: m.generate("the cat", max_new_tokens=10 ** 6), "max_seq_len"),
    (lambda m: m.embed_fgrams([(1,)]), "2 to K=3"),
    (lambda m: m.embed_fgrams([(1, 10 ** 6)]), "must lie in 0..299"),
    (lambda m: m.generate([[1, -2]]), "token ids"),
])
def test_bad_input_is_a_user_error(model, call, words):
  with pytest.raises(UserError, match=words):
    call(model)


def test_a_bad_tier_or_run_is_a_user_error(tmp_path):
  with pytest.raises(UserError, match="pick ram, disk or remote"):
    scone_jax.load(str(tmp_path), tier="ssd")
  with pytest.raises(UserError, match="config.gin"):
    scone_jax.load(str(tmp_path / "nothing"))


def test_several_devices_split_the_sequences_and_give_the_same_results(model, tiny_scone_run):
  """Data parallel over 4 of the 8 fake CPU devices: 3 prompts of different lengths (padded to 4
  rows), their scores and f-gram rows equal the one-device model's."""
  wide = scone_jax.load(tiny_scone_run["workdir"], devices=4)
  assert wide.devices == 4 and len(wide.run.params["token_embed"].sharding.device_set) == 4
  prompts = PROMPTS + ["a"]
  assert wide.generate(prompts, max_new_tokens=8) == model.generate(prompts, max_new_tokens=8)
  texts = ["the cat sat on the mat.", "a small dog", "my friend"]
  np.testing.assert_allclose(wide.score(texts), model.score(texts), rtol=1e-5)
  grams = model.run.exp.method.fgram_vocab.as_tuples()[:3]
  np.testing.assert_allclose(wide.embed_fgrams(grams), model.embed_fgrams(grams), rtol=1e-5, atol=1e-6)
  with pytest.raises(UserError, match="this host has 8 device"):
    scone_jax.load(tiny_scone_run["workdir"], devices=9)
