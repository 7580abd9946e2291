"""`prepare --tokenizer tokenizer.json`: a Hugging Face `tokenizers` byte-level BPE, trained here on a
fixture (nothing is downloaded), in GPT-2's layout (`<|endoftext|>` is the last id, bos = eos, no pad,
no unk).

References never go through the code under test: shards are read with a bare ArrayRecordReader and
decoded with a bare `tokenizers.Tokenizer` loaded from DATA/tokenizer.json; the specials are looked
up in that tokenizer by name.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordReader
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from scone_jax import cli
from scone_jax.data import hf_tokenizer, pipeline, prepare, shards, tokenizer as tokenizer_lib
from scone_jax.errors import UserError
from tests.helpers import assert_prepare_refuses

EOT = "<|endoftext|>"
DOCS = [
    "def f(x):\n\treturn x  *  2\n\n\n",
    "Grüße aus Köln — naïve café ▁ \ue000 日本語 🎉\r\n  indented   text\t\tend",
    "    four spaces\n        eight spaces\n\ttab\n \t mixed \n",
    "no newline at end",
    f"a literal {EOT} inside a document is text, not the end of it",
    "\n\nleading newlines, a form feed \x0c, U+2028 \u2028 and CJK 漢字かな\n",
    "class A:\n  pass\n" * 20,
    "ελληνικά, русский, עברית, العربية",
    "  x = [1, 2, 3]  # trailing  ",
    "\\n is not a newline; \" quotes \"",
    " leading space",
    "🎉",
]


def train_byte_level_bpe(path: str, texts, vocab_size: int = 420, normalizer=None) -> Tokenizer:
  """A GPT-2-style byte-level BPE: no prefix space, ByteLevel decoder, <|endoftext|> added last."""
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  if normalizer is not None:
    tok.normalizer = normalizer
  tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                                     initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  tok.add_special_tokens([EOT])
  tok.save(path)
  return tok


def _write_jsonl(path, texts) -> None:
  with open(path, "w") as f:
    for i, text in enumerate(texts):
      f.write(json.dumps({"text": text, "id": i}) + "\n")


def _decoded(data_dir, split) -> list[list[int]]:
  ids = []
  for name in sorted(os.listdir(data_dir)):
    if name.startswith(split + "-") and name.endswith(".array_record"):
      reader = ArrayRecordReader(os.path.join(data_dir, name))
      ids += [np.frombuffer(r, "<i4").tolist() for r in reader.read(list(range(reader.num_records())))]
      reader.close()
  return ids


@pytest.fixture(scope="module")
def hf_data(tmp_path_factory):
  root = tmp_path_factory.mktemp("hf")
  tok_path = str(root / "tokenizer.json")
  train_byte_level_bpe(tok_path, DOCS * 3)
  _write_jsonl(root / "corpus.jsonl", DOCS)
  data_dir = str(root / "data")
  result = prepare.prepare([str(root / "corpus.jsonl")], data_dir, tokenizer=tok_path,
                           validation_fraction=0.3, register=False)
  return root, tok_path, data_dir, result


def test_shards_decode_back_to_the_documents(hf_data):
  _, tok_path, data_dir, result = hf_data
  bare = Tokenizer.from_file(os.path.join(data_dir, "tokenizer.json"))
  train, validation = _decoded(data_dir, "train"), _decoded(data_dir, "validation")
  assert train and validation
  assert sorted(bare.decode(ids, skip_special_tokens=False) for ids in train + validation) == sorted(DOCS)
  eot = bare.token_to_id(EOT)
  assert all(eot not in ids for ids in train + validation)   # the literal string never becomes the id
  assert result.meta.extra["lossy_documents"] == 0
  # The decoder generate and round-trip checks use: DATA's own tokenizer.
  data_tokenizer = tokenizer_lib.open_data_tokenizer(data_dir)
  assert sorted(data_tokenizer.decode(ids) for ids in train + validation) == sorted(DOCS)


def test_meta_takes_vocabulary_and_specials_from_the_tokenizer(hf_data):
  _, tok_path, data_dir, result = hf_data
  meta = json.load(open(os.path.join(data_dir, "meta.json")))
  assert meta == result.meta.to_json()
  bare = Tokenizer.from_file(tok_path)
  eot = bare.token_to_id(EOT)
  assert meta["vocab_size"] == bare.get_vocab_size() == eot + 1   # GPT-2's layout: the EOT id is the last
  assert (meta["eos_id"], meta["bos_id"], meta["pad_id"], meta["unk_id"]) == (eot, eot, -1, -1)
  tokenizer_bytes = open(tok_path, "rb").read()
  assert open(os.path.join(data_dir, "tokenizer.json"), "rb").read() == tokenizer_bytes
  assert meta["tokenizer_sha256"] == hashlib.sha256(tokenizer_bytes).hexdigest()
  info = meta["extra"]["tokenizer"]
  assert info["kind"] == "huggingface" and info["file"] == "tokenizer.json" and info["trained"] is False
  assert info["copied_from"] == os.path.abspath(tok_path)
  assert info["special_tokens"] == {"eos": EOT, "bos": EOT, "pad": None, "unk": None}
  assert not os.path.exists(os.path.join(data_dir, "vocab.model"))
  assert shards.load_meta(data_dir).bos_id == shards.load_meta(data_dir).eos_id   # bos = eos is valid
  shards.verify_shards(data_dir)
  assert sum(meta["num_documents"].values()) == len(DOCS)
  assert sum(meta["extra"]["num_characters"].values()) == sum(map(len, DOCS))


def test_pipeline_frames_documents_when_bos_is_eos(hf_data):
  _, _, data_dir, _ = hf_data
  meta = shards.load_meta(data_dir)
  docs = [d.tolist() for d in shards.read_documents(data_dir, "train")]
  spec = pipeline.PipelineSpec(data_dir=data_dir, split="train", seq_len=2048, global_batch=1, shuffle=False,
                               prefetch=0)
  batch = next(pipeline.eval_batches(spec))
  inputs, targets, segments = batch["inputs"][0], batch["targets"][0], batch["segment_ids"][0]
  for s, doc in enumerate(docs, start=1):
    where = segments == s
    assert inputs[where].tolist() == [meta.bos_id, *doc]
    assert targets[where].tolist() == [*doc, meta.eos_id]


def test_a_tampered_tokenizer_file_is_refused(hf_data, tmp_path):
  _, _, data_dir, _ = hf_data
  copy = str(tmp_path / "data")
  shutil.copytree(data_dir, copy)
  with open(os.path.join(copy, "tokenizer.json"), "a") as f:
    f.write(" ")
  with pytest.raises(UserError, match="tokenizer_sha256"):
    tokenizer_lib.open_data_tokenizer(copy)


def test_sentencepiece_stays_the_default_and_names_its_file(tmp_path):
  _write_jsonl(tmp_path / "c.jsonl", DOCS)
  result = prepare.prepare([str(tmp_path / "c.jsonl")], str(tmp_path / "data"), vocab_size=400, register=False)
  info = result.meta.extra["tokenizer"]
  assert info["kind"] == "sentencepiece" and info["file"] == "vocab.model" and info["trained"] is True
  assert (result.meta.pad_id, result.meta.eos_id, result.meta.bos_id, result.meta.unk_id) == (0, 1, 2, 3)
  tok = tokenizer_lib.open_data_tokenizer(str(tmp_path / "data"))
  assert tok.kind == "sentencepiece"
  assert sorted(tok.decode(d) for s in shards.SPLITS for d in shards.read_documents(str(tmp_path / "data"), s)) \
      == sorted(DOCS)


def test_a_lossy_tokenizer_is_a_warning_with_a_count(tmp_path, capsys):
  tok_path = str(tmp_path / "lower.json")
  train_byte_level_bpe(tok_path, DOCS, normalizer=normalizers.Lowercase())
  _write_jsonl(tmp_path / "c.jsonl", DOCS)
  result = prepare.prepare([str(tmp_path / "c.jsonl")], str(tmp_path / "data"), tokenizer=tok_path, register=False)
  want = sum(d.lower() != d for d in DOCS)
  assert result.meta.extra["lossy_documents"] == want > 0
  assert f"does not round-trip {want} documents" in capsys.readouterr().err


def test_template_specials_and_pad_come_from_the_file(tmp_path):
  """A Llama-style file: the post-processor's template puts <s> before the sequence (BOS), </s> is
  found by name (EOS), <pad> by name; the model's unk_token is the UNK."""
  tok = Tokenizer(models.BPE(unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(DOCS, trainers.BpeTrainer(vocab_size=400, show_progress=False,
                                                    special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
                                                    initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
  tok.save(str(tmp_path / "llama.json"))
  loaded = hf_tokenizer.HFTokenizer(str(tmp_path / "llama.json"))
  assert loaded.special_ids == {"pad_id": 3, "eos_id": 2, "bos_id": 1, "unk_id": 0}
  assert loaded.encode("hi") == tok.encode("hi", add_special_tokens=False).ids   # no template BOS in documents


def _bad_cases(root):
  spm_dir = root / "spm"
  spm_dir.mkdir()
  (root / "corrupt.json").write_text('{"version": "1.0", "model": ')
  (root / "not_a_tokenizer.json").write_text('{"vocab": {"a": 0}}')
  (root / "notes.txt").write_text("just text\n")
  good = str(root / "c.jsonl")
  tok = str(root / "tok.json")
  return {
      "missing": (["--input", good, "--tokenizer", str(root / "missing.json")], "missing.json"),
      "corrupt": (["--input", good, "--tokenizer", str(root / "corrupt.json")], "corrupt.json"),
      "not a tokenizer": (["--input", good, "--tokenizer", str(root / "not_a_tokenizer.json")], "not_a_tokenizer"),
      "text file": (["--input", good, "--tokenizer", str(root / "notes.txt")], "notes.txt"),
      "with --vocab_size": (["--input", good, "--tokenizer", tok, "--vocab_size", "300"], "--vocab_size"),
      "with --vocab": (["--input", good, "--tokenizer", tok, "--vocab", tok], "--vocab"),
      "tokenizer.json to --vocab": (["--input", good, "--vocab", tok], "--tokenizer"),
  }


def test_bad_tokenizer_is_one_line_exit_2_and_no_out(tmp_path, capsys):
  _write_jsonl(tmp_path / "c.jsonl", DOCS)
  train_byte_level_bpe(str(tmp_path / "tok.json"), DOCS)
  assert_prepare_refuses(tmp_path, capsys, _bad_cases(tmp_path))


def test_cli_registers_a_seqio_task_that_decodes(tmp_path, capsys):
  """Through the CLI (it registers the seqio task, which imports TensorFlow)."""
  tok_path = str(tmp_path / "tok.json")
  train_byte_level_bpe(tok_path, DOCS)
  _write_jsonl(tmp_path / "c.jsonl", DOCS)
  out = str(tmp_path / "gpt")
  assert cli.main(["prepare", "--input", str(tmp_path / "c.jsonl"), "--tokenizer", tok_path, "--out", out]) == 0
  assert "seqio task: scone_jax_gpt" in capsys.readouterr().out
  from scone_jax.data import seqio_task
  seqio = seqio_task.import_seqio()
  task = seqio.get_mixture_or_task("scone_jax_gpt")
  vocabulary = task.output_features["targets"].vocabulary
  bare = Tokenizer.from_file(tok_path)
  read_back = []
  for split in shards.SPLITS:
    for example in task.get_dataset(sequence_length=None, split=split, shuffle=False).as_numpy_iterator():
      read_back.append(vocabulary.decode(example["targets"].tolist()))
  assert sorted(read_back) == sorted(DOCS)
  assert vocabulary.eos_id == bare.token_to_id(EOT) and vocabulary.vocab_size == bare.get_vocab_size()
  import tensorflow as tf
  ids = bare.encode(DOCS[1]).ids
  assert vocabulary.encode_tf(tf.constant(DOCS[1])).numpy().tolist() == ids
  assert vocabulary.decode_tf(tf.constant([ids], tf.int32)).numpy()[0].decode() == DOCS[1]


@pytest.mark.slow
def test_scone_trains_evaluates_and_generates_on_gpt2_style_data(tmp_path, capsys):
  """The paper's tokenizer kind end to end: byte-level BPE data whose BOS is its EOS, f-grams, a
  tiny SCONE run, eval (bits per byte) and generate. The completion's text is the tokenizers
  library's own decode of the generated ids (an independent decoder), and the prompt's ids are
  its encode."""
  from tests.helpers import tiny_bindings
  texts = [f"{doc} (copy {i})" for i in range(12) for doc in DOCS]   # repeats: f-grams with counts
  tok_path = str(tmp_path / "tokenizer.json")
  train_byte_level_bpe(tok_path, texts)
  _write_jsonl(tmp_path / "corpus.jsonl", texts)
  data_dir = str(tmp_path / "data")
  meta = prepare.prepare([str(tmp_path / "corpus.jsonl")], data_dir, tokenizer=tok_path, validation_fraction=0.2,
                         register=False).meta
  assert meta.bos_id == meta.eos_id
  fg, run = str(tmp_path / "fg"), str(tmp_path / "run")
  assert cli.main(["fgrams", "build", "--data", data_dir, "--max_n", "3", "--size", "40", "--min_count", "2",
                   "--out", fg]) == 0
  binds = tiny_bindings(data_dir, 3) + [f"FGRAM_DIR = '{fg}'", "TrainConfig.eval_batches = 1"]
  argv = ["train", "--gin_file", "models/tiny.gin", "--gin_file", "methods/scone.gin", "--gin_file", "runs/cpu.gin",
          *[f"--gin.{b.replace(' = ', '=')}" for b in binds], "--workdir", run, "--quiet"]
  assert cli.main(argv) == 0
  capsys.readouterr()
  assert cli.main(["eval", "--workdir", run, "--format", "json"]) == 0
  ev = json.loads(capsys.readouterr().out)
  assert ev["tokens"] > 0 and ev["bits_per_byte"] is not None and ev["bits_per_byte"] > 0
  prompt = DOCS[0][:20]
  assert cli.main(["generate", "--workdir", run, "--prompt", prompt, "--max_new_tokens", "6", "--format", "json"]) == 0
  out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  bare = Tokenizer.from_file(tok_path)
  assert len(out["tokens"]) == 6
  assert out["text"] == bare.decode(out["tokens"], skip_special_tokens=False)
