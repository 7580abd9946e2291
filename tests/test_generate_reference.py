"""`generate` against a plain-numpy greedy decode (tests/reference.py) on the suite's tiny SCONE
run, from A_f (--store none) and from every store tier (ram, disk, remote): the same greedy tokens,
and the same f-gram fed for the prompt and for every new token. The decoder and the numpy model
share no code: the numpy model reads the checkpoint's parameters by name, matches by brute force
and runs the full forward over the whole sequence at every step."""
from __future__ import annotations

import os

import jax
import numpy as np
import pytest

from scone_jax.data.tokenizer import Tokenizer
from scone_jax.pending import Done
from scone_jax.serve.generate import load_decoder
from scone_jax.train.restore import load_run
from tests.reference import brute_force_match, np_forward, np_params

PROMPTS = ["the cat sat on", "my friend looked at the red", "a small"]
# Teacher-forced continuations of PROMPTS, full of f-grams (greedy completions of the 4-step
# model repeat one token and match nothing).
CONTINUATIONS = [" the mat. the cat sat on the mat.", " house. a dog ran to the river.",
                 " bird painted a boat. the teacher sat on"]


class _Recorded:
  """A decoder's features that record what they hand the device: the prompt's, then each step's."""

  def __init__(self, features):
    self.features, self.history_len = features, features.history_len
    self.prompts, self.steps = [], []

  def prompt(self, inputs_BxL, valid_BxL):
    out = self.features.prompt(inputs_BxL, valid_BxL).result()
    self.prompts.append(out)
    return Done(out)

  def step(self, history_BxH):
    out = self.features.step(history_BxH).result()
    self.steps.append(out)
    return Done(out)


def _fed_ids(features: dict, row_ids: dict) -> np.ndarray:
  """The f-gram id each position's features stand for (-1: T[x]), recovered from what was fed:
  A_f's input tokens (--store none) or the stored row (a store tier), keys of `row_ids`."""
  if "unique_tokens" in features:
    keys = [tuple(int(t) for t in row if t >= 0) for row in features["unique_tokens"]]
  else:
    keys = [row.tobytes() for row in np.asarray(features["unique_rows"], np.float32)]
  return np.vectorize(lambda i: row_ids[keys[i]] if i >= 0 else -1, otypes=[np.int64])(features["fgram_index"])


@pytest.fixture(scope="module")
def served(tiny_scone_run):
  """The suite's tiny SCONE run (conftest.py) and its float32 store, read-only."""
  return {"data": tiny_scone_run["data"], "run": tiny_scone_run["workdir"], "store": tiny_scone_run["store"]}


@pytest.fixture(scope="module")
def numpy_model(served):
  """The run's checkpoint as float64 numpy, V_f, and every f-gram's key as fed: its tokens and its
  stored row (read with zarr-python, not the store code)."""
  import zarr
  loaded = load_run(served["run"])
  fgrams = loaded.exp.method.fgram_vocab.as_tuples()
  table = zarr.open_group(served["store"], mode="r")["embeddings"][:]
  row_ids = {**{g: r for r, g in enumerate(fgrams)}, **{row.tobytes(): r for r, row in enumerate(table)}}
  assert len(row_ids) == 2 * len(fgrams)
  return {"params": np_params(jax.device_get(loaded.params)), "cfg": loaded.exp.model, "fgrams": fgrams,
          "max_n": loaded.exp.method.max_n, "row_ids": row_ids}


def _against_numpy(numpy_model, recorded: _Recorded, prompts, out, bos: int, eos: int, n: int, forced=None) -> int:
  """Replays a generate call in numpy: row b is [BOS] + prompt, then at step t the numpy model's
  greedy token (full forward over the whole sequence so far, brute-force matches) must be what
  generate sampled, the token fed (the sample, or forced[b][t]) is appended, and the f-gram fed
  with it must be the match ending at it. Returns how many fed positions matched an f-gram."""
  params, cfg, fgrams, k = (numpy_model[key] for key in ("params", "cfg", "fgrams", "max_n"))
  assert len(recorded.prompts) == 1 and len(recorded.steps) <= n - 1
  prompt_ids = _fed_ids(recorded.prompts[0], numpy_model["row_ids"])
  step_ids = [_fed_ids(f, numpy_model["row_ids"])[:, 0] for f in recorded.steps]
  matched = 0
  for b, prompt in enumerate(prompts):
    seq = [bos, *prompt]
    want_ids = brute_force_match(fgrams, k, [seq])[0][0]
    np.testing.assert_array_equal(prompt_ids[b, :len(seq)], want_ids, err_msg=f"prompt {b}: f-gram ids fed")
    matched += int((want_ids >= 0).sum())
    sampled = out[b] + [eos]   # a free row that stopped sampled EOS last (not listed)
    steps = n if forced is not None else min(n, len(out[b]) + 1)
    for t in range(steps):
      logits = np_forward(params, cfg, seq, fgrams)[0][-1]
      want = int(np.argmax(logits))
      assert sampled[t] == want or logits[want] - logits[sampled[t]] < 1e-4, (
          f"prompt {b} step {t}: generate chose {sampled[t]}, the numpy model {want} "
          f"(logits {logits[want]} vs {logits[sampled[t]]})")
      seq.append(int(sampled[t] if forced is None else forced[b][t]))
      if t < len(step_ids):   # the features fed with this token: its own match
        want_id = int(brute_force_match(fgrams, k, [seq])[0][0, -1])
        assert step_ids[t][b] == want_id, f"prompt {b} step {t}: fed f-gram {step_ids[t][b]}, want {want_id} ({seq})"
        matched += want_id >= 0
  return matched


@pytest.mark.parametrize("source", ["none", "ram", "disk", "remote"])
def test_generate_equals_a_numpy_greedy_decode(served, numpy_model, source):
  """Decoder.generate (load_decoder, as `scone-jax generate` builds it) from A_f and from every
  store tier against a greedy decode loop in numpy from the same checkpoint (_against_numpy):
  free greedy completions, and completions teacher-forced through f-grams so that the decode
  steps, not only the prompts, feed f-gram rows."""
  where = {"none": "none", "ram": served["store"], "disk": served["store"], "remote": "file://" + served["store"]}
  decoder, run = load_decoder(served["run"], store=where[source], tier="ram" if source == "none" else source)
  inner = decoder.features
  tok = Tokenizer(os.path.join(served["data"], "vocab.model"))
  prompts = [tok.encode(p) for p in PROMPTS]
  bos, eos, n = run.exp.data_meta.bos_id, run.exp.data_meta.eos_id, 10
  decoder.features = recorded = _Recorded(inner)
  out = decoder.generate(prompts, max_new_tokens=n, bos_id=bos, eos_id=eos)
  assert _against_numpy(numpy_model, recorded, prompts, out, bos, eos, n) >= 6
  forced = np.array([tok.encode(c)[:n] for c in CONTINUATIONS], np.int32)
  decoder.features = recorded = _Recorded(inner)
  out = decoder.generate(prompts, max_new_tokens=n, bos_id=bos, eos_id=eos, force_tokens=forced)
  prompt_matches = sum(int((brute_force_match(numpy_model["fgrams"], numpy_model["max_n"], [[bos, *p]])[0] >= 0).sum())
                       for p in prompts)
  assert _against_numpy(numpy_model, recorded, prompts, out, bos, eos, n, forced) - prompt_matches >= 10
