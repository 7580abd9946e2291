"""The paper's evaluation (`scone-jax eval`, docs/METHODS.md 5) on the suite's tiny SCONE run:
bits per byte, several held-out corpora in one call, zero-shot multiple choice (with and without
the exported store) and the refusals.

References, none sharing the code under test: the plain-numpy model (`reference.np_forward`: the
decoder and A_f written out, brute-force f-gram matches) run on each whole document or context +
choice; byte counts from the texts the test wrote (UTF-8, multi-byte characters included); the
harness's tokenization of a choice written out again here; two one-corpus evals for the
several-corpora eval; a choice whose log-likelihood is forced lower (its tokens extend another
choice's)."""
from __future__ import annotations

import itertools
import json
import math
import os

import jax
import numpy as np
import pytest
import sentencepiece as spm

from scone_jax.cli import main
from scone_jax.commands.eval import format_text
from scone_jax.data import shards
from scone_jax.export.manifest import identity_of
from scone_jax.serve.store import open_store
from scone_jax.train import tasks
from scone_jax.train.evaluate import bits_per_byte
from scone_jax.train.restore import load_run
from tests.helpers import WORDS, make_data
from tests.reference import np_forward, np_params

# Two prepares, the shared run's restore and the scorer's compiles: ~40 s, beyond make test-fast's budget.
pytestmark = pytest.mark.slow

TAILS = ("", " café", " über", " naïve", " déjà vu", " ok", " again", " twice", " today")


def _log_softmax(logits: np.ndarray) -> np.ndarray:
  m = logits.max(axis=-1, keepdims=True)
  return logits - m - np.log(np.exp(logits - m).sum(axis=-1, keepdims=True))


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_scone_run):
  """The shared run (read-only), its numpy form, and corpora prepared here with its tokenizer:
  `short` (texts of one length n, n + 1 dividing 32, some with multi-byte characters, 90%
  validation) and `ids` (the same texts given as token ids: pretokenized, so no byte count)."""
  root = tmp_path_factory.mktemp("eval_tasks")
  data = tiny_scone_run["data"]
  vocab = os.path.join(data, "vocab.model")
  sp = spm.SentencePieceProcessor(model_file=vocab)
  # Documents of one length n with n + 1 dividing the rows' 32 (the tokenizer is trained per
  # session, so n is picked here), multi-byte characters first.
  by_length: dict[int, list[str]] = {}
  for (s, v, o), tail in itertools.product(itertools.product(*WORDS.values()), TAILS):
    for text in (f"{s} {v} {o}{tail}.", f"{s} {v}{tail}."):
      by_length.setdefault(len(sp.encode(text)), []).append(text)
  found = next(((n, sorted(set(by_length[n]), key=lambda t: (len(t.encode()) == len(t), t))[:24])
                for n in (15, 31, 7) if len(set(by_length.get(n, ()))) >= 24
                and sum(len(t.encode()) > len(t) for t in by_length[n]) >= 4), None)
  assert found, {k: len(v) for k, v in by_length.items()}
  n, texts = found
  with open(root / "short.jsonl", "w") as f:
    f.writelines(json.dumps({"text": t}) + "\n" for t in texts)
  short, ids = str(root / "short"), str(root / "ids")
  assert main(["prepare", "--input", str(root / "short.jsonl"), "--vocab", vocab, "--out", short,
               "--validation_fraction", "0.9"]) == 0
  flat = []
  for t in texts:
    flat += sp.encode(t) + [1]
  np.save(root / "ids.npy", np.array(flat[:-1], np.int32))
  assert main(["prepare", "--input", str(root / "ids.npy"), "--vocab", vocab, "--separator_id", "1", "--out", ids,
               "--validation_fraction", "0.9"]) == 0
  loaded = load_run(tiny_scone_run["workdir"])
  return {"root": root, "run": tiny_scone_run["workdir"], "store": tiny_scone_run["store"], "data": data,
          "sp": sp, "texts": texts, "doc_tokens": n, "short": short, "ids": ids, "loaded": loaded,
          "params": np_params(jax.device_get(loaded.params)), "cfg": loaded.exp.model,
          "fgrams": loaded.exp.method.fgram_vocab.as_tuples()}


def _json(capsys, argv: list[str]) -> dict:
  assert main(argv) == 0, capsys.readouterr().err
  return json.loads(capsys.readouterr().out)


def _refused(capsys, argv: list[str], *named: str) -> str:
  code = main(argv)
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(err) == 1 and err[0].startswith("scone-jax eval: error:"), (argv, code, err)
  for text in named:
    assert text in err[0], (text, err[0])
  return err[0]


@pytest.fixture(scope="module")
def several(env, mc):
  """One eval call over both corpora and the multiple-choice file (json)."""
  import contextlib
  import io
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    assert main(["eval", "--workdir", env["run"], "--data", f"short={env['short']}", "--data", f"ids={env['ids']}",
                 "--task", f"piqa=mc:{mc['path']}", "--format", "json"]) == 0
  return json.loads(out.getvalue())


def _np_nll(env, doc) -> float:
  """NLL (nats) of doc's tokens and its EOS given [BOS] + the tokens before: the numpy model."""
  meta = env["loaded"].exp.data_meta
  inputs = [meta.bos_id, *doc]
  targets = [*doc, meta.eos_id]
  logp = _log_softmax(np_forward(env["params"], env["cfg"], inputs, env["fgrams"])[0])
  return -float(sum(logp[i, t] for i, t in enumerate(targets)))


def test_prepare_records_the_utf8_bytes_of_each_split(env):
  """meta.json `num_bytes`: each document's text as read, encoded UTF-8, no separators (the
  decoded shards: the run's tokenizer is lossless); pretokenized input records none."""
  meta = shards.load_meta(env["short"])
  for split in shards.SPLITS:
    texts = [env["sp"].decode(d.tolist()) for d in shards.read_documents(env["short"], split)]
    assert meta.num_bytes[split] == sum(len(t.encode("utf-8")) for t in texts)
  assert sum(meta.num_bytes.values()) == sum(len(t.encode("utf-8")) for t in env["texts"])
  assert sum(meta.num_bytes.values()) > sum(len(t) for t in env["texts"])   # bytes, not characters
  assert shards.load_meta(env["ids"]).num_bytes is None
  assert "num_bytes" not in json.load(open(os.path.join(env["ids"], "meta.json")))
  with open(os.path.join(env["data"], "meta.json")) as f:   # the suite's corpus: every document's bytes
    recorded = json.load(f)["num_bytes"]
  corpus = os.path.join(os.path.dirname(env["data"]), "corpus.jsonl")
  with open(corpus) as f:
    assert sum(recorded.values()) == sum(len(json.loads(line)["text"].encode()) for line in f)


def test_bits_per_byte_by_hand(env, several):
  """bpb = summed NLL (nats) of every target, EOS included / (ln 2 x UTF-8 bytes): the NLL from the
  numpy model on each whole document (n + 1 inputs, n + 1 dividing 32: rows never cut one), the
  bytes from the texts."""
  assert bits_per_byte(math.log(2) * 12.0, 12) == pytest.approx(1.0)   # 12 nats over 12 / ln 2 bits: 1 bit a byte
  docs = list(shards.read_documents(env["short"], "validation"))
  assert env["loaded"].exp.data.seq_len == 32 and docs and all(len(d) == env["doc_tokens"] for d in docs)
  nll = sum(_np_nll(env, d.tolist()) for d in docs)
  num_bytes = sum(len(env["sp"].decode(d.tolist()).encode("utf-8")) for d in docs)
  got = several["corpora"]["short"]
  assert got["tokens"] == len(docs) * (env["doc_tokens"] + 1) and got["bytes"] == num_bytes and got["complete"]
  assert got["loss"] == pytest.approx(nll / got["tokens"], rel=1e-5)
  assert got["bits_per_byte"] == pytest.approx(nll / (math.log(2) * num_bytes), rel=1e-5)
  # Pretokenized data has no text: no bits per byte, and then no average of it.
  assert several["corpora"]["ids"]["bits_per_byte"] is None and several["corpora"]["ids"]["bytes"] is None
  assert several["average"]["bits_per_byte"] is None


def test_several_corpora_equal_one_corpus_evals_and_average_is_their_mean(env, several, capsys):
  """Two corpora in one call = two calls of one corpus each (named after their basenames); the
  average is the unweighted mean; the one-corpus output keeps its top-level numbers."""
  for name in ("short", "ids"):
    alone = _json(capsys, ["eval", "--workdir", env["run"], "--data", env[name], "--format", "json"])
    assert alone["corpora"][name] == several["corpora"][name]
    assert {k: alone[k] for k in ("loss", "perplexity", "tokens")} == {
        k: several["corpora"][name][k] for k in ("loss", "perplexity", "tokens")}
  for key in ("loss", "perplexity"):
    assert several["average"][key] == pytest.approx(np.mean([c[key] for c in several["corpora"].values()]))
  assert "loss" not in several   # top-level numbers only for exactly one corpus
  text = format_text(several).splitlines()   # the text form: one line per corpus, the average, the task
  assert len(text) == 5 and text[1].split()[0] == "short" and "bits/byte n/a" in text[2], text
  assert "unweighted mean of 2 corpora" in text[3]
  assert text[4].split()[:3] == ["piqa", "acc", f"{several['tasks']['piqa']['acc']:.4f}"]


def test_a_partial_pass_reports_no_bits_per_byte(env, capsys):
  """--max_batches below the pass's length: the bytes of the part read are unknown, so no bpb; at
  the pass's length (each of the 8 streams, document i in stream i % 8, needs ceil(inputs / 32)
  rows) the pass is whole."""
  inputs = [0] * 8
  for i, doc in enumerate(shards.read_documents(env["short"], "validation")):
    inputs[i % 8] += len(doc) + 1
  batches = max(-(-n // 32) for n in inputs)
  assert batches >= 2
  base = ["eval", "--workdir", env["run"], "--data", env["short"], "--format", "json"]
  partial = _json(capsys, base + ["--max_batches", str(batches - 1)])["corpora"]["short"]
  assert not partial["complete"] and partial["bits_per_byte"] is None and partial["bytes"] is None
  assert 0 < partial["tokens"] < shards.load_meta(env["short"]).num_tokens["validation"]
  whole = _json(capsys, base + ["--max_batches", str(batches)])["corpora"]["short"]
  assert whole["complete"] and whole["bits_per_byte"] is not None


# ---- multiple choice ---------------------------------------------------------------------------

def _mc_examples(env) -> list[dict]:
  """Contexts and choices from the corpus's words (choices with their leading space), a forced
  case and one context longer than the model (1024 positions)."""
  rng = np.random.default_rng(0)
  out = []
  for i in range(10):
    s, v = rng.choice(WORDS["subject"]), rng.choice(WORDS["verb"])
    context = f"{s} {v}" if i % 3 else f"{rng.choice(WORDS['subject'])} painted a boat. {s} {v}"
    choices = [" " + o + "." for o in rng.choice(WORDS["object"], size=3, replace=False)]
    out.append({"context": context, "choices": choices})
  out.append({"context": "the cat", "choices": [" sat", " sat sat sat sat"], "forced": 0})
  out.append({"context": " ".join(["the old man sat on the mat."] * 90), "choices": [" the cat", " a boat"]})
  return out


def _np_choice_ll(env, context: str, choice: str) -> tuple[float, bool]:
  """The harness's loglikelihood of choice after context (no trailing whitespace in these
  contexts): tokens of context + choice past the context's own, after a BOS, the last 1023
  tokens kept; summed log-probabilities from the numpy model. (ll, truncated)."""
  sp = env["sp"]
  ctx, whole = sp.encode(context), sp.encode(context + choice)
  n = len(whole) - len(ctx)
  seq = whole[-1023:]
  inputs = [env["loaded"].exp.data_meta.bos_id, *seq]
  logp = _log_softmax(np_forward(env["params"], env["cfg"], inputs, env["fgrams"])[0])
  return float(sum(logp[j, seq[j]] for j in range(len(seq) - n, len(seq)))), len(whole) > 1023


@pytest.fixture(scope="module")
def mc(env):
  """The multiple-choice file with labels set from the numpy model: the argmax for the first half
  (and the forced case), another choice after, so acc and acc_norm are known in advance."""
  examples = _mc_examples(env)
  lls, truncated = [], 0
  for ex in examples:
    scored = [_np_choice_ll(env, ex["context"], c) for c in ex["choices"]]
    lls.append([ll for ll, _ in scored])
    truncated += any(cut for _, cut in scored)
  acc = acc_norm = 0
  for i, (ex, ll) in enumerate(zip(examples, lls)):
    best = int(np.argmax(ll))
    if "forced" in ex:
      assert best == ex["forced"]   # its tokens extend the other choice's: a lower sum
    ex["label"] = best if i < len(examples) // 2 or "forced" in ex else (best + 1) % len(ll)
    acc += ex["label"] == best
    acc_norm += ex["label"] == int(np.argmax(np.array(ll) / [len(c.encode()) for c in ex["choices"]]))
  path = env["root"] / "mc.jsonl"
  with open(path, "w") as f:
    for i, ex in enumerate(examples):
      key = "gold" if i == 1 else "label"   # the alias
      f.write(json.dumps({"context": ex["context"], "choices": ex["choices"], key: ex["label"]}) + "\n")
    f.write("\n")   # a blank line is skipped
  n = len(examples)
  return {"path": str(path), "lls": lls, "acc": acc / n, "acc_norm": acc_norm / n, "n": n, "truncated": truncated}


@pytest.fixture(scope="module")
def scored(env, mc):
  """The file scored with A_f (no store) through the Python API."""
  loaded = env["loaded"]
  scorer = tasks.Scorer(loaded.exp, loaded.trainer, loaded.params)
  return scorer.score_mc(_tokenizer(env), tasks.read_mc(mc["path"]))


def _tokenizer(env):
  from scone_jax.data.tokenizer import open_data_tokenizer
  return open_data_tokenizer(env["data"])


def test_mc_log_likelihoods_equal_the_numpy_model(mc, scored, several):
  """Per-choice log-likelihoods = the numpy model on each whole context + choice (brute-force
  matches over the whole sequence), the truncated one included; acc and acc_norm as known, from
  the API and from the command (with --data in the same call)."""
  for want, ll in zip(mc["lls"], scored["loglikelihoods"]):
    np.testing.assert_allclose(ll, want, rtol=1e-4, atol=1e-4)
  assert mc["truncated"] == 1
  want = {"examples": mc["n"], "acc": mc["acc"], "acc_norm": mc["acc_norm"], "truncated": mc["truncated"]}
  assert {k: scored[k] for k in want} == want
  assert several["tasks"] == {"piqa": want}


def test_mc_with_the_store_equals_without(env, mc, scored):
  """With the float32 export (--store) in place of A_f: the same log-likelihoods."""
  loaded = env["loaded"]
  store = open_store(env["store"], "ram", expected=identity_of(loaded))
  got = tasks.Scorer(loaded.exp, loaded.trainer, loaded.params, store=store).score_mc(
      _tokenizer(env), tasks.read_mc(mc["path"]))
  for a, b in zip(got["loglikelihoods"], scored["loglikelihoods"]):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  assert got["acc"] == scored["acc"] and got["acc_norm"] == scored["acc_norm"]


def test_harness_tokenization_moves_trailing_space_to_the_choice(env):
  sp = env["sp"]
  [(whole, n)] = tasks.encode_pairs(_tokenizer(env), [("the cat sat on ", "the mat.")])
  assert whole == sp.encode("the cat sat on the mat.") and whole[-n:] == sp.encode(" the mat.")[-n:]
  assert n == len(sp.encode("the cat sat on the mat.")) - len(sp.encode("the cat sat on"))


# ---- refusals ----------------------------------------------------------------------------------

def test_bad_tasks_and_corpora_are_one_line_refusals(env, capsys, tmp_path):
  run = env["run"]
  good = '{"context": "the cat", "choices": [" sat", " ran"], "label": 0}\n'
  files = {"malformed": good + "not json\n", "label": good + '{"context": "a", "choices": [" b", " c"], "label": 2}\n',
           "nochoices": '{"context": "a", "choices": " b", "label": 0}\n',
           "emptychoice": '{"context": "a", "choices": [" b", ""], "label": 0}\n',
           "boollabel": '{"context": "a", "choices": [" b", " c"], "label": true}\n', "empty": "\n\n"}
  for name, text in files.items():
    (tmp_path / f"{name}.jsonl").write_text(text)
  p = {name: str(tmp_path / f"{name}.jsonl") for name in files}

  def task(name):
    return ["eval", "--workdir", run, "--task", f"mc:{p[name]}"]

  _refused(capsys, ["eval", "--workdir", run, "--task", f"mc:{tmp_path}/nope.jsonl"], "nope.jsonl", "does not exist")
  _refused(capsys, task("malformed"), f"{p['malformed']}:2:", "not JSON")
  _refused(capsys, task("label"), f"{p['label']}:2:", "label 2 is out of range")
  _refused(capsys, task("nochoices"), f"{p['nochoices']}:1:", "'choices'")
  _refused(capsys, task("emptychoice"), f"{p['emptychoice']}:1:", "choice 1 is empty")
  _refused(capsys, task("boollabel"), f"{p['boollabel']}:1:", "whole number")
  _refused(capsys, task("empty"), "holds no examples")
  _refused(capsys, ["eval", "--workdir", run, "--task", f"hellaswag:{p['label']}"], "is not a task", "mc:FILE")
  # NAME twice, for corpora and for tasks (two files of one name as well).
  _refused(capsys, ["eval", "--workdir", run, "--data", f"a={env['short']}", "--data", f"a={env['ids']}"],
           "--data name 'a' is given twice", "NAME=DIR")
  _refused(capsys, ["eval", "--workdir", run, "--task", f"mc:{p['label']}", "--task", f"mc:{p['label']}"],
           "--task name 'label' is given twice")
  # A corpus made with another tokenizer (synthetic ids): named, with what to do.
  foreign, _ = make_data(str(tmp_path / "foreign"), docs=10, val_docs=4)
  _refused(capsys, ["eval", "--workdir", run, "--data", f"short={env['short']}", "--data", f"other={foreign}"],
           f"--data other='{foreign}'", "another tokenizer", "the run's tokenizer")
