"""`scone-jax prepare`: corpus -> tokenizer + ArrayRecord shards, checked against plain Python.

References here never go through the code under test: documents are decoded with a bare
sentencepiece.SentencePieceProcessor, counts are recounted from the shard files, the stdlib
listing is an os.walk, the split rule is recomputed with hashlib.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import sysconfig
import time

import numpy as np
import pytest
import sentencepiece as spm
from array_record.python.array_record_module import ArrayRecordReader

from scone_jax import cli
from scone_jax.data import corpus, prepare, shards, tokenizer
from tests.helpers import assert_prepare_refuses

FRACTION = 0.3
TXT_DOCS = {
    "a.txt": "def f(x):\n\treturn x  *  2\n\n\n",
    "b.txt": "Grüße aus Köln — naïve café ▁ \ue000 日本語 🎉\r\n  indented   text\t\tend",
    "sub/c.txt": "    four spaces\n        eight spaces\n\ttab\n \t mixed \n",
    "d.txt": "no newline at end",
    "e.txt": "\n\nleading newlines and a form feed \x0c and CJK 漢字かな\n",
    "f.txt": "class A:\n  pass\n" * 20,
}
JSONL_DOCS = [
    "line one\nline two\n",
    "🎉 party\t\ttabs   and   spaces",
    "ελληνικά, русский, עברית, العربية",
    "  x = [1, 2, 3]  # trailing  ",
    "\\n is not a newline; \" quotes \"",
    "short",
]


def _write_fixture(root) -> list[tuple[str, str]]:
  """Writes the text corpus; returns (identity, text) of every document, independently."""
  expected = []
  for name, text in TXT_DOCS.items():
    path = root / "corpus" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))
  jsonl = root / "corpus" / "g.jsonl"
  jsonl.write_text("".join(json.dumps({"text": t, "id": i}) + "\n"
                           for i, t in enumerate(JSONL_DOCS)))
  for name, text in sorted(TXT_DOCS.items()):
    if "/" not in name:
      expected.append((str(root / "corpus" / name), text))
  expected.append((str(root / "corpus" / "sub" / "c.txt"), TXT_DOCS["sub/c.txt"]))
  expected += [(f"{jsonl}:{i + 1}", t) for i, t in enumerate(JSONL_DOCS)]
  return expected


def _inputs(root) -> list[str]:
  return [f"{root}/corpus/*.txt,{root}/corpus/sub/*.txt", f"{root}/corpus/*.jsonl"]


def _decoded_split(data_dir, split) -> list[str]:
  """Every document of a split, decoded by a bare SentencePiece processor from the raw records."""
  processor = spm.SentencePieceProcessor(model_file=os.path.join(data_dir, "vocab.model"))
  texts = []
  for path in sorted(os.listdir(data_dir)):
    if path.startswith(split + "-"):
      reader = ArrayRecordReader(os.path.join(data_dir, path))
      for record in reader.read(list(range(reader.num_records()))):
        texts.append(processor.decode(np.frombuffer(record, "<i4").tolist()))
      reader.close()
  return texts


def _hash_fraction(identity: str, text: str) -> float:
  digest = hashlib.sha256(f"{identity}\0{text}".encode()).digest()
  return int.from_bytes(digest[:8], "little") / 2**64


def _file_bytes(data_dir) -> dict[str, bytes]:
  return {name: open(os.path.join(data_dir, name), "rb").read()
          for name in sorted(os.listdir(data_dir))}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  root = tmp_path_factory.mktemp("prep")
  expected = _write_fixture(root)
  data_dir = str(root / "data")
  result = prepare.prepare(_inputs(root), data_dir, vocab_size=400, validation_fraction=FRACTION,
                           register=False)
  return root, expected, data_dir, result


def test_shards_decode_back_to_the_input_documents(prepared):
  _, expected, data_dir, _ = prepared
  decoded = _decoded_split(data_dir, "train") + _decoded_split(data_dir, "validation")
  assert sorted(decoded) == sorted(text for _, text in expected)


def test_split_is_by_document_hash_and_reproducible(prepared, tmp_path):
  root, expected, data_dir, _ = prepared
  want_validation = sorted(t for i, t in expected if _hash_fraction(i, t) < FRACTION)
  assert want_validation and len(want_validation) < len(expected)  # the fixture tests both sides
  assert sorted(_decoded_split(data_dir, "validation")) == want_validation
  assert sorted(_decoded_split(data_dir, "train")) == sorted(
      t for i, t in expected if _hash_fraction(i, t) >= FRACTION)
  # Same input, second run (over the first with --overwrite): byte-identical files.
  first = _file_bytes(data_dir)
  again = str(tmp_path / "again")
  prepare.prepare(_inputs(root), again, vocab_size=400, validation_fraction=FRACTION,
                  register=False)
  assert _file_bytes(again) == first
  prepare.prepare(_inputs(root), again, vocab_size=400, validation_fraction=FRACTION,
                  overwrite=True, register=False)
  assert _file_bytes(again) == first
  assert sorted(os.listdir(tmp_path)) == ["again"]  # no temporary directories left behind


def test_meta_matches_counts_recomputed_from_the_shards(prepared):
  _, expected, data_dir, result = prepared
  meta = json.load(open(os.path.join(data_dir, "meta.json")))
  assert meta == result.meta.to_json()
  processor = spm.SentencePieceProcessor(model_file=os.path.join(data_dir, "vocab.model"))
  assert meta["vocab_size"] == processor.get_piece_size() == 400
  assert (meta["pad_id"], meta["eos_id"], meta["bos_id"], meta["unk_id"]) == (0, 1, 2, 3)
  assert meta["tokenizer_sha256"] == hashlib.sha256(
      open(os.path.join(data_dir, "vocab.model"), "rb").read()).hexdigest()
  total_docs = 0
  for split in shards.SPLITS:
    names = sorted(n for n in os.listdir(data_dir) if n.startswith(split + "-"))
    assert meta["num_shards"][split] == len(names)
    assert names == [f"{split}-{i:05d}-of-{len(names):05d}.array_record" for i in range(len(names))]
    docs = tokens = 0
    for name in names:
      reader = ArrayRecordReader(os.path.join(data_dir, name))
      records = reader.read(list(range(reader.num_records())))
      reader.close()
      docs += len(records)
      tokens += sum(len(r) // 4 for r in records)
      assert meta["extra"]["shard_sha256"][name] == hashlib.sha256(
          open(os.path.join(data_dir, name), "rb").read()).hexdigest()
    assert (meta["num_documents"][split], meta["num_tokens"][split]) == (docs, tokens)
    total_docs += docs
  assert total_docs == len(expected)
  assert set(meta["extra"]["shard_sha256"]) == {
      n for n in os.listdir(data_dir) if n.endswith(".array_record")}


def test_given_vocab_is_copied_and_gives_the_same_shards(prepared, tmp_path, capsys):
  root, _, data_dir, _ = prepared
  out = str(tmp_path / "given")
  result = prepare.prepare(_inputs(root), out, vocab=os.path.join(data_dir, "vocab.model"),
                           validation_fraction=FRACTION, register=False, progress=True)
  assert "tokenizing" in capsys.readouterr().err  # progress bars when asked for
  assert result.meta.extra["tokenizer"]["trained"] is False
  mine, theirs = _file_bytes(out), _file_bytes(data_dir)
  assert mine.pop("meta.json") != theirs.pop("meta.json")  # only the provenance differs
  assert mine == theirs


def test_tokenizer_is_lossless_on_hard_strings(prepared, tmp_path):
  _, _, data_dir, _ = prepared
  unigram_path = str(tmp_path / "unigram.model")
  tokenizer.train(JSONL_DOCS + list(TXT_DOCS.values()), unigram_path, 360, "unigram")
  rng = random.Random(0)
  alphabet = " \t\n\r\x0b\x0c\x00▁\ue000\ue0001aé\u0301ﬁＡ①\u2028\ufeff🎉日"
  hard = ["", " ", "  ", "▁", "\ue000", "\ue0001", "\ue0002▁▁ ", "a\r\nb", "\x00",
          "".join(chr(c) for c in range(1, 0x3000)), "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \U0010FFFD"]
  hard += ["".join(rng.choice(alphabet) for _ in range(rng.randrange(40))) for _ in range(300)]
  for model_path in (os.path.join(data_dir, "vocab.model"), unigram_path):
    processor = spm.SentencePieceProcessor(model_file=model_path)
    for text in hard:
      assert processor.decode(processor.encode(text)) == text, (model_path, repr(text))


def test_training_sample_is_bounded_and_deterministic():
  docs = [f"line {i}\n" * (i % 7 + 1) + "x" * (i * 37 % 500) for i in range(300)]
  samples = []
  for _ in range(2):
    sample = tokenizer.TrainingSample(max_chars=5000)
    for doc in docs:
      sample.add_document(doc)
    samples.append(sample.sentences())
  assert samples[0] == samples[1]
  assert 0 < sum(map(len, samples[0])) <= 5000
  everything = {c for doc in docs for c in tokenizer.training_chunks(doc, 10**9)}
  assert all(any(chunk in whole for whole in everything) for chunk in samples[0])


def _stdlib_reference() -> list[str]:
  root = sysconfig.get_paths()["stdlib"]
  excluded = {"test", "tests", "idle_test", "testing", "testdata", "test_data",
              "site-packages", "dist-packages", "__pycache__"}
  found = []
  for dirpath, _, filenames in os.walk(root):
    parts = os.path.relpath(dirpath, root).split(os.sep)
    if any(p in excluded or p.startswith("test_") or p.endswith(("_test", "_tests"))
           for p in parts):
      continue
    found += [os.path.normpath(os.path.join(os.path.relpath(dirpath, root), n))
              for n in filenames if n.endswith(".py")]
  return sorted(found)


def test_builtin_stdlib_lists_library_files_without_tests(tmp_path, capsys):
  listed = corpus.stdlib_files()
  assert listed == _stdlib_reference()
  assert "os.py" in listed and "json/decoder.py" in listed
  for path in listed:
    assert not {"test", "tests", "idle_test", "site-packages"} & set(path.split(os.sep)), path
  # A prefix of the corpus through the CLI: the documents come back exactly.
  out = str(tmp_path / "data")
  assert cli.main(["prepare", "--input", "builtin:python-stdlib", "--out", out,
                   "--vocab_size", "400", "--max_docs", "12"]) == 0
  assert "seqio task: scone_jax_data" in capsys.readouterr().out
  root = sysconfig.get_paths()["stdlib"]
  texts = [open(os.path.join(root, p), encoding="utf-8", newline="").read() for p in listed]
  want = [t for t in texts if t][:12]
  assert sorted(_decoded_split(out, "train") + _decoded_split(out, "validation")) == sorted(want)


def test_seqio_task_in_and_out(tmp_path, capsys):
  from scone_jax.data import seqio_task
  seqio = seqio_task.import_seqio()
  import tensorflow as tf
  texts = {"train": JSONL_DOCS + list(TXT_DOCS.values()), "validation": JSONL_DOCS[:2]}

  def dataset_fn(split, shuffle_files, seed=None):
    return tf.data.Dataset.from_tensor_slices({"text": texts[split]})

  seqio.TaskRegistry.remove("scone_jax_test_tiny")
  seqio.TaskRegistry.add("scone_jax_test_tiny", output_features={},
                         source=seqio.FunctionDataSource(dataset_fn,
                                                         splits=["train", "validation"]))
  out = str(tmp_path / "tiny")
  assert cli.main(["prepare", "--input", "seqio:scone_jax_test_tiny", "--out", out,
                   "--vocab_size", "400"]) == 0
  assert "seqio task: scone_jax_tiny" in capsys.readouterr().out
  task = seqio.get_mixture_or_task("scone_jax_tiny")
  processor = spm.SentencePieceProcessor(model_file=os.path.join(out, "vocab.model"))
  read_back = []
  for split in shards.SPLITS:
    dataset = task.get_dataset(sequence_length=None, split=split, shuffle=False)
    examples = list(dataset.as_numpy_iterator())
    assert all(e["targets"].dtype == np.int32 for e in examples)
    assert [e["targets"].tolist() for e in examples] == [
        d.tolist() for d in shards.read_documents(out, split)]
    read_back += [processor.decode(e["targets"].tolist()) for e in examples]
  assert sorted(read_back) == sorted(texts["train"] + texts["validation"])
  vocabulary = task.output_features["targets"].vocabulary
  assert vocabulary.decode(processor.encode(TXT_DOCS["b.txt"])) == TXT_DOCS["b.txt"]


def _error_cases(root):
  good = f"{root}/corpus/*.txt"
  (root / "bad").mkdir()
  (root / "bad" / "empty.txt").write_text("")
  (root / "bad" / "binary.txt").write_bytes(b"abc\0def")
  (root / "bad" / "latin1.txt").write_bytes("café".encode("latin-1"))
  (root / "bad" / "notjson.jsonl").write_text('{"text": "ok"}\nnot json\n')
  (root / "bad" / "nofield.jsonl").write_text('{"body": "x"}\n')
  (root / "bad" / "notspm.model").write_text("this is not a model\n")
  (root / "afile").write_text("x")
  return {
      "glob matches nothing": (["--input", f"{root}/nothing/*.txt"], "nothing/*.txt"),
      "empty corpus": (["--input", f"{root}/bad/empty.txt"], "empty.txt"),
      "binary file": (["--input", f"{root}/bad/binary.txt"], "binary.txt"),
      "not utf-8": (["--input", f"{root}/bad/latin1.txt"], "latin1.txt"),
      "jsonl not json": (["--input", f"{root}/bad/notjson.jsonl"], "notjson.jsonl"),
      "jsonl no field": (["--input", f"{root}/bad/nofield.jsonl"], "nofield.jsonl"),
      "unknown seqio task": (["--input", "seqio:no_such_task_xyz"], "no_such_task_xyz"),
      "vocab missing": (["--input", good, "--vocab", f"{root}/missing.model"], "missing.model"),
      "vocab not spm": (["--input", good, "--vocab", f"{root}/bad/notspm.model"], "notspm.model"),
      "vocab_size too small": (["--input", good, "--vocab_size", "10"], "--vocab_size 10"),
      "vocab_size too large": (["--input", good, "--vocab_size", "100000"], "--vocab_size 100000"),
      "out not writable": (["--input", good], "afile/data"),
  }


def test_bad_input_exits_2_with_one_line_and_no_out(tmp_path, capsys):
  _write_fixture(tmp_path)
  assert_prepare_refuses(tmp_path, capsys, _error_cases(tmp_path), lambda name, index: str(
      tmp_path / ("afile/data" if name == "out not writable" else f"out_{index}")))
  # A non-empty --out is refused and left as it was.
  keep = tmp_path / "keep"
  keep.mkdir()
  (keep / "x").write_text("mine")
  assert cli.main(["prepare", "--input", f"{tmp_path}/corpus/*.txt", "--out", str(keep)]) == 2
  assert "--overwrite" in capsys.readouterr().err
  assert os.listdir(keep) == ["x"]


@pytest.mark.slow
def test_full_stdlib_corpus_round_trips(tmp_path):
  start = time.perf_counter()
  result = prepare.prepare("builtin:python-stdlib", str(tmp_path / "stdlib"), register=False)
  seconds = time.perf_counter() - start
  meta = result.meta
  print(f"full stdlib prepare: {seconds:.1f}s, documents {meta.num_documents}, "
        f"tokens {meta.num_tokens}")
  assert meta.vocab_size == 4096 and meta.extra["lossy_documents"] == 0
  root = sysconfig.get_paths()["stdlib"]
  texts = [open(os.path.join(root, p), encoding="utf-8", newline="").read()
           for p in _stdlib_reference()]
  texts = [t for t in texts if t]
  assert sum(meta.num_documents.values()) == len(texts)
  decoded = _decoded_split(result.data_dir, "validation")
  processor = spm.SentencePieceProcessor(model_file=os.path.join(result.data_dir, "vocab.model"))
  for text in random.Random(0).sample(texts, 50):
    assert processor.decode(processor.encode(text)) == text
  assert set(decoded) <= set(texts)


def test_seqio_input_without_the_seqio_extra_says_what_to_install(tmp_path, capsys, monkeypatch):
  """The base install has no seqio (nor TensorFlow): a seqio: input is a one-line error naming the
  extra. (Absence simulated the way Python marks a module missing: sys.modules[name] = None.)"""
  from scone_jax.cli import main
  from scone_jax.data import seqio_task
  monkeypatch.setattr(seqio_task, "_seqio", None)
  monkeypatch.setitem(sys.modules, "seqio", None)
  out = tmp_path / "out"
  assert main(["prepare", "--input", "seqio:some_task", "--out", str(out)]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "pip install 'scone_jax[seqio]'" in err[0], err
  assert not out.exists()
  # Any other input prepares as before, without registering a seqio task.
  assert main(["prepare", "--input", "builtin:python-stdlib", "--out", str(out), "--vocab_size", "400",
               "--max_docs", "6"]) == 0
  assert "seqio task: none (the seqio extra is not installed" in capsys.readouterr().out
  assert "seqio" not in sys.modules or sys.modules["seqio"] is None
