"""Corpus readers of `prepare` (jsonl / .gz / .zst, parquet, Hugging Face datasets, pretokenized .bin /
.npy), `--workers N` (byte-identical to one worker) and memory (a jsonl larger than a memory cap
prepares under it).

References never go through the code under test: files are written here with json, gzip,
zstandard, pyarrow, datasets and numpy; shards are read with a bare ArrayRecordReader and decoded with
a bare `tokenizers.Tokenizer`; split membership is recomputed with hashlib.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordReader
from tokenizers import Tokenizer

from scone_jax import cli
from scone_jax.data import corpus, prepare, readers
from scone_jax.errors import UserError
from tests.test_tokenizers import DOCS, EOT, train_byte_level_bpe

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> str:
  path = str(tmp_path_factory.mktemp("tok") / "tokenizer.json")
  train_byte_level_bpe(path, DOCS * 3)
  return path


def _records(data_dir) -> dict[str, list[list[int]]]:
  out = {}
  for split in ("train", "validation"):
    out[split] = []
    for name in sorted(os.listdir(data_dir)):
      if name.startswith(split + "-") and name.endswith(".array_record"):
        reader = ArrayRecordReader(os.path.join(data_dir, name))
        out[split] += [np.frombuffer(r, "<i4").tolist() for r in reader.read(list(range(reader.num_records())))]
        reader.close()
  return out


def _texts(data_dir) -> list[str]:
  bare = Tokenizer.from_file(os.path.join(data_dir, "tokenizer.json"))
  records = _records(data_dir)
  return sorted(bare.decode(ids) for ids in records["train"] + records["validation"])


def _docs(inputs, **kwargs) -> list[tuple[str, str]]:
  return [(d.identity, d.text) for d in corpus.open_corpus(inputs, **kwargs).documents()]


def _file_bytes(data_dir) -> dict[str, bytes]:
  return {n: open(os.path.join(data_dir, n), "rb").read() for n in sorted(os.listdir(data_dir))}


# ---- jsonl, .jsonl.gz, .jsonl.zst ----

def _jsonl_lines(texts, field="body") -> list[bytes]:
  lines = []
  for i, text in enumerate(texts):
    lines.append((json.dumps({field: text, "n": i}, ensure_ascii=i % 2 == 0) + ("\r\n" if i % 3 == 0 else "\n")).encode())
    if i == 2:
      lines.append(b"   \n")   # a blank line: no document, but it counts as a line
  return lines


def test_jsonl_gz_zst_read_the_same_documents_line_by_line(tmp_path, tok):
  import zstandard
  lines = _jsonl_lines(DOCS)
  half = len(lines) // 2
  (tmp_path / "a.jsonl").write_bytes(b"".join(lines))
  # Two gzip members and two zstd frames: readers must go across them.
  (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(b"".join(lines[:half])) + gzip.compress(b"".join(lines[half:])))
  z = zstandard.ZstdCompressor()
  (tmp_path / "c.jsonl.zst").write_bytes(z.compress(b"".join(lines[:half])) + z.compress(b"".join(lines[half:])))
  want_lines = [n for n, line in enumerate(lines, start=1) if line.strip()]
  for name in ("a.jsonl", "b.jsonl.gz", "c.jsonl.zst"):
    path = str(tmp_path / name)
    assert _docs([path], text_field="body") == [(f"{path}:{n}", t) for n, t in zip(want_lines, DOCS)], name
  out = str(tmp_path / "data")
  result = prepare.prepare([f"{tmp_path}/*.jsonl*"], out, tokenizer=tok, text_field="body", register=False)
  assert _texts(out) == sorted(DOCS * 3)
  assert sum(result.meta.num_documents.values()) == 3 * len(DOCS)


def test_jsonl_streams_documents_before_a_bad_line(tmp_path):
  """The reader yields documents as it goes: the ones before a truncated gzip tail come out first,
  then the error names the file and the line."""
  lines = _jsonl_lines([f"document {i}" for i in range(2000)], field="text")
  blob = gzip.compress(b"".join(lines))
  (tmp_path / "cut.jsonl.gz").write_bytes(blob[: len(blob) * 3 // 4])
  seen = []
  with pytest.raises(UserError, match=r"cut\.jsonl\.gz.*at line \d+"):
    for doc in corpus.open_corpus([str(tmp_path / "cut.jsonl.gz")]).documents():
      seen.append(doc.text)
  assert 0 < len(seen) < 2000 and seen == [f"document {i}" for i in range(len(seen))]


# ---- parquet ----

def test_parquet_rows_in_file_order_with_a_text_column(tmp_path, tok):
  import pyarrow as pa
  import pyarrow.parquet as pq
  texts = DOCS + [None, ""]
  (tmp_path / "pq").mkdir()
  for part, chunk in enumerate((texts[:7], texts[7:])):
    table = pa.table({"id": list(range(len(chunk))), "content": pa.array(chunk, pa.large_string())})
    pq.write_table(table, tmp_path / "pq" / f"part-{part}.parquet", row_group_size=3)
  got = _docs([f"{tmp_path}/pq/*.parquet"], text_field="content")
  want = [(f"{tmp_path}/pq/part-{p}.parquet:{r}", t) for p, chunk in enumerate((texts[:7], texts[7:]))
          for r, t in enumerate(chunk) if t]
  assert got == want
  out = str(tmp_path / "data")
  result = prepare.prepare([f"{tmp_path}/pq/*.parquet"], out, tokenizer=tok, text_field="content", register=False)
  assert _texts(out) == sorted(DOCS)
  assert result.meta.extra["skipped_documents"] == {"empty": 2}


# ---- Hugging Face datasets ----

def test_hf_dataset_saved_to_disk_all_splits_or_one(tmp_path, tok):
  import datasets
  datasets.disable_progress_bars()
  train, validation = DOCS[:8], DOCS[8:]
  dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": train, "n": list(range(8))}),
                             "validation": datasets.Dataset.from_dict({"text": validation,
                                                                      "n": list(range(len(validation)))})})
  saved = str(tmp_path / "saved")
  dd.save_to_disk(saved)
  assert _docs([f"hf:{saved}"]) == ([(f"hf:{saved}/train:{i}", t) for i, t in enumerate(train)]
                                    + [(f"hf:{saved}/validation:{i}", t) for i, t in enumerate(validation)])
  assert _docs([f"hf:{saved}:validation"]) == [(f"hf:{saved}/validation:{i}", t) for i, t in enumerate(validation)]
  single = str(tmp_path / "single")
  datasets.Dataset.from_dict({"body": DOCS}).save_to_disk(single)
  assert [t for _, t in _docs([f"hf:{single}"], text_field="body")] == DOCS
  out = str(tmp_path / "data")
  result = prepare.prepare([f"hf:{saved}"], out, tokenizer=tok, register=False)
  assert _texts(out) == sorted(DOCS)
  assert result.meta.source == f"hf:{saved} (text; train,validation)"


def test_hf_dataset_name_from_the_local_cache_offline(tmp_path, monkeypatch):
  """A dataset in the local cache is found by name with the hub off (nothing is downloaded). The
  cache entry is made by datasets' own parquet builder, laid out as a hub dataset's cache."""
  import datasets
  datasets.disable_progress_bars()
  import pyarrow as pa
  import pyarrow.parquet as pq
  from datasets.data_files import DataFilesDict
  from datasets.packaged_modules.parquet.parquet import Parquet
  pq.write_table(pa.table({"text": DOCS}), tmp_path / "src.parquet")
  cache = tmp_path / "cache"
  builder = Parquet(cache_dir=str(cache), dataset_name="toy_corpus", hash="0123abcd",
                    data_files=DataFilesDict.from_patterns({"train": [str(tmp_path / "src.parquet")]}))
  builder.download_and_prepare()
  [config_dir] = os.listdir(cache / "toy_corpus")
  os.rename(cache / "toy_corpus" / config_dir, cache / "toy_corpus" / "default")   # a hub cache's layout
  monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(cache))
  assert [t for _, t in _docs(["hf:toy_corpus:train"])] == DOCS
  assert [t for _, t in _docs(["hf:toy_corpus"])] == DOCS
  assert os.environ.get("HF_HUB_OFFLINE") is None or os.environ.get("HF_HUB_OFFLINE") == "1"
  with pytest.raises(UserError, match="no dataset 'no_such_corpus_xyz' in the local Hugging Face cache"):
    corpus.open_corpus(["hf:no_such_corpus_xyz"])


# ---- pretokenized .bin / .npy ----

def _id_docs(vocab: int, separator: int, n: int, seed: int) -> list[list[int]]:
  rng = np.random.default_rng(seed)
  ids = [i for i in range(vocab) if i != separator]
  return [rng.choice(ids, int(rng.integers(1, 60))).tolist() for _ in range(n)]


def test_pretokenized_bin_and_npy_are_written_as_they_are(tmp_path, tok):
  bare = Tokenizer.from_file(tok)
  eot, vocab = bare.token_to_id(EOT), bare.get_vocab_size()
  bin_docs, npy_docs = _id_docs(vocab, eot, 40, 0), _id_docs(vocab, eot, 30, 1)
  # nanoGPT: every document followed by the EOT (the trailing one ends the last document)
  np.array([i for d in bin_docs for i in d + [eot]], np.uint16).tofile(tmp_path / "train.bin")
  flat = [eot, eot]   # leading and doubled separators: empty pieces, skipped
  for d in npy_docs:
    flat += d + [eot]
  np.save(tmp_path / "more.npy", np.array(flat[:-1], np.int32))
  paths = [str(tmp_path / "train.bin"), str(tmp_path / "more.npy")]
  for path, docs, first in ((paths[0], bin_docs, 0), (paths[1], npy_docs, 2)):
    tokens = readers.open_tokens(path)
    for chunk in (7, 1 << 20):   # documents that span read blocks
      got = [(d.identity, d.ids.tolist()) for d in readers.token_documents(tokens, eot, chunk=chunk) if len(d.ids)]
      assert got == [(f"{path}:{first + i}", d) for i, d in enumerate(docs)]
  out = str(tmp_path / "data")
  result = prepare.prepare(paths, out, tokenizer=tok, separator_id=eot, validation_fraction=0.3, register=False)
  records = _records(out)

  def fraction(identity, ids):
    digest = hashlib.sha256(identity.encode() + b"\0" + np.asarray(ids, "<i4").tobytes()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64

  identified = ([(f"{paths[0]}:{i}", d) for i, d in enumerate(bin_docs)]
                + [(f"{paths[1]}:{2 + i}", d) for i, d in enumerate(npy_docs)])
  want_validation = sorted(d for i, d in identified if fraction(i, d) < 0.3)
  assert want_validation and sorted(records["validation"]) == want_validation
  assert sorted(records["train"]) == sorted(d for i, d in identified if fraction(i, d) >= 0.3)
  meta = result.meta
  assert meta.extra["lossy_documents"] is None
  assert meta.extra["pretokenized"] == {"separator_id": eot, "files": {paths[0]: "uint16", paths[1]: "int32"}}
  assert meta.extra["skipped_documents"] == {"empty": 2}   # the .npy's leading ones; a trailing one ends a document
  assert sum(meta.num_tokens.values()) == sum(map(len, bin_docs + npy_docs))
  assert sum(meta.extra["num_characters"].values()) == sum(len(bare.decode(d)) for d in bin_docs + npy_docs)
  assert (meta.eos_id, meta.bos_id, meta.vocab_size) == (eot, eot, vocab)


# ---- --workers N ----

def test_workers_write_byte_identical_data(tmp_path, tok):
  rng = np.random.default_rng(0)
  words = DOCS + ["alpha", "beta", "gamma", "\t", "\n"]
  texts = [" ".join(rng.choice(words, int(rng.integers(1, 12)))) + f" {i}" for i in range(1500)]
  with open(tmp_path / "c.jsonl", "w") as f:
    for text in texts:
      f.write(json.dumps({"text": text}) + "\n")
  runs = {}
  for workers in (1, 2):
    runs[workers] = str(tmp_path / f"hf{workers}")
    prepare.prepare([str(tmp_path / "c.jsonl")], runs[workers], tokenizer=tok, workers=workers, register=False)
  assert _file_bytes(runs[1]) == _file_bytes(runs[2])   # meta.json included
  assert _texts(runs[1]) == sorted(texts)
  spm = {}
  for workers in (1, 2):   # a trained SentencePiece model, the same with 2 workers
    spm[workers] = str(tmp_path / f"spm{workers}")
    prepare.prepare([str(tmp_path / "c.jsonl")], spm[workers], vocab_size=420, workers=workers,
                    max_docs=600, register=False)
  assert _file_bytes(spm[1]) == _file_bytes(spm[2])
  bare = Tokenizer.from_file(tok)   # pretokenized: the workers decode (to count characters)
  eot = bare.token_to_id(EOT)
  np.array([i for d in _id_docs(bare.get_vocab_size(), eot, 700, 2) for i in d + [eot]], np.uint16).tofile(
      tmp_path / "ids.bin")
  ids = {}
  for workers in (1, 2):
    ids[workers] = str(tmp_path / f"ids{workers}")
    prepare.prepare([str(tmp_path / "ids.bin")], ids[workers], tokenizer=tok, separator_id=eot, workers=workers,
                    register=False)
  assert _file_bytes(ids[1]) == _file_bytes(ids[2])


# ---- bad input: one line, exit 2, no DATA ----

def _bad_cases(root, tok):
  import datasets
  datasets.disable_progress_bars()
  import pyarrow as pa
  import pyarrow.parquet as pq
  (root / "nofield.jsonl").write_text('{"body": "x"}\n')
  (root / "blank.jsonl").write_text("\n  \n\n")
  (root / "surrogate.jsonl").write_text('{"text": "\\ud83c\\udf89 a pair is fine"}\n{"text": "a lone \\ud800"}\n')
  (root / "notjson.jsonl.gz").write_bytes(gzip.compress(b'{"text": "ok"}\nnot json\n'))
  (root / "notgzip.jsonl.gz").write_bytes(b'{"text": "plain, not gzip"}\n')
  pq.write_table(pa.table({"body": ["x"]}), root / "nocol.parquet")
  pq.write_table(pa.table({"text": [1, 2]}), root / "ints.parquet")
  pq.write_table(pa.table({"text": pa.array([None, ""], pa.string())}), root / "empty.parquet")
  (root / "fake.parquet").write_text("not parquet")
  (root / "notsaved").mkdir()
  (root / "notsaved" / "x.txt").write_text("x")
  datasets.Dataset.from_dict({"body": ["x"]}).save_to_disk(str(root / "nobody"))
  datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["x"]})}).save_to_disk(str(root / "dd"))
  np.array([5, 6, 0, 7], np.uint16).tofile(root / "ids.bin")
  (root / "odd.bin").write_bytes(b"\x01\x02\x03")
  np.save(root / "matrix.npy", np.zeros((2, 3), np.int32))
  np.save(root / "floats.npy", np.zeros(4, np.float32))
  np.array([5, 60000, 0], np.uint16).tofile(root / "big_id.bin")
  (root / "t.txt").write_text("text")
  jl = str(root / "nofield.jsonl")
  return {
      "missing file": (["--input", str(root / "nothing.jsonl")], "nothing.jsonl"),
      "unknown jsonl field": (["--input", jl], "nofield.jsonl"),
      "unknown --text_field": (["--input", jl, "--text_field", "title"], "'title'"),
      "empty corpus": (["--input", str(root / "blank.jsonl")], "blank.jsonl"),
      "unpaired surrogate": (["--input", str(root / "surrogate.jsonl")], "surrogate.jsonl' line 2"),
      "gz line not json": (["--input", str(root / "notjson.jsonl.gz")], "notjson.jsonl.gz' line 2"),
      "gz not gzip": (["--input", str(root / "notgzip.jsonl.gz")], "notgzip.jsonl.gz"),
      "parquet no column": (["--input", str(root / "nocol.parquet")], "no column 'text'"),
      "parquet not strings": (["--input", str(root / "ints.parquet")], "ints.parquet"),
      "parquet empty": (["--input", str(root / "empty.parquet")], "holds no documents"),
      "not parquet": (["--input", str(root / "fake.parquet")], "fake.parquet"),
      "hf missing dir": (["--input", f"hf:{root}/nope"], "nope"),
      "hf not saved": (["--input", f"hf:{root}/notsaved"], "save_to_disk"),
      "hf no field": (["--input", f"hf:{root}/nobody"], "no column 'text'"),
      "hf unknown split": (["--input", f"hf:{root}/dd:test"], "no split 'test'"),
      "hf empty": (["--input", "hf:"], "hf:"),
      "hf combined": (["--input", f"hf:{root}/dd", "--input", jl], "cannot be combined"),
      "bin without separator": (["--input", str(root / "ids.bin"), "--tokenizer", tok], "--separator_id"),
      "bin without tokenizer": (["--input", str(root / "ids.bin"), "--separator_id", "0"], "--tokenizer"),
      "bin odd size": (["--input", str(root / "odd.bin"), "--separator_id", "0", "--tokenizer", tok], "odd.bin"),
      "npy 2-D": (["--input", str(root / "matrix.npy"), "--separator_id", "0", "--tokenizer", tok], "matrix.npy"),
      "npy floats": (["--input", str(root / "floats.npy"), "--separator_id", "0", "--tokenizer", tok], "floats.npy"),
      "id outside vocab": (["--input", str(root / "big_id.bin"), "--separator_id", "0", "--tokenizer", tok], "60000"),
      "ids and text": (["--input", str(root / "ids.bin"), "--input", str(root / "t.txt"), "--separator_id", "0",
                        "--tokenizer", tok], "alone"),
      "separator with text": (["--input", str(root / "t.txt"), "--separator_id", "0"], "--separator_id"),
      "workers 0": (["--input", str(root / "t.txt"), "--workers", "0"], "--workers"),
  }


def test_bad_inputs_are_one_line_exit_2_and_no_out(tmp_path, tok, capsys):
  for index, (name, (argv, named)) in enumerate(_bad_cases(tmp_path, tok).items()):
    out = str(tmp_path / f"out_{index}")
    code = cli.main(["prepare", *argv, "--out", out])
    err = capsys.readouterr().err.strip()
    assert code == 2, (name, err)
    assert len(err.splitlines()) == 1 and err.startswith("scone-jax prepare: error:"), (name, err)
    assert named in err, (name, err)
    assert not os.path.exists(out), name
    assert not [n for n in os.listdir(tmp_path) if ".partial-" in n], name


# ---- memory ----

_SPOOL = """
import json, sys, numpy as np
from scone_jax.data import shards, spool
def kb(key):
  for line in open("/proc/self/status"):
    if line.startswith(key + ":"):
      return int(line.split()[1])
rng = np.random.default_rng(0)
records = [rng.integers(0, 50000, 6000).astype(np.int32) for _ in range(16)]   # 24 KB each
writer = spool.SpooledShardWriter(sys.argv[1], "train", 8, sys.argv[1] + "/.spool")
base = kb("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
  f.write("5")
for i in range(6000):   # 137 MB round-robin into 8 shards
  writer.write(records[i % 16])
writer.close()
print(json.dumps({"extra_kb": kb("VmHWM") - base}))
"""


def test_spooled_shards_are_byte_identical_and_bounded(tmp_path):
  """SpooledShardWriter writes what shards.ShardWriter writes, and its memory does not grow with
  the number of shards: 137 MB into 8 shards takes < 48 MB extra (ShardWriter, all 8 ArrayRecord
  writers open at once: ~100 MB with array_record 0.8.6)."""
  from scone_jax.data import shards, spool
  rng = np.random.default_rng(0)
  docs = [rng.integers(0, 50000, int(rng.integers(0, 400))).astype(np.int32) for _ in range(500)]
  (tmp_path / "a").mkdir()
  (tmp_path / "b").mkdir()
  plain = shards.ShardWriter(str(tmp_path / "a"), "train", 6)
  spooled = spool.SpooledShardWriter(str(tmp_path / "b"), "train", 6, str(tmp_path / "spool"))
  for doc in docs:
    plain.write(doc)
    spooled.write(doc)
  plain.close()
  spooled.close()
  assert _file_bytes(tmp_path / "a") == _file_bytes(tmp_path / "b")
  assert (spooled.num_documents, spooled.num_tokens, spooled.shard_max_ids()) == (
      plain.num_documents, plain.num_tokens, plain.shard_max_ids())
  assert os.listdir(tmp_path / "spool") == []
  if not os.access("/proc/self/clear_refs", os.W_OK):
    pytest.skip("needs /proc/self/clear_refs (Linux) to reset the peak RSS")
  (tmp_path / "big").mkdir()
  proc = subprocess.run([sys.executable, "-c", _SPOOL, str(tmp_path / "big")], capture_output=True, text=True,
                        env=dict(os.environ, PYTHONPATH=REPO), timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  extra = json.loads(proc.stdout.strip().splitlines()[-1])["extra_kb"] >> 10
  assert extra < 48, f"spooled shard writing took {extra} MB of extra resident memory"


_MANY_SHARDS = """
import resource, sys, numpy as np
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
from scone_jax.data import spool
spool.SPOOL_BUDGET = 4096   # many flushes
rng = np.random.default_rng(1)
writer = spool.SpooledShardWriter(sys.argv[1], "train", 300, sys.argv[1] + "/.spool")
for i in range(900):
  writer.write(np.full(int(rng.integers(0, 40)), i, np.int32))
writer.close()
"""


def test_spooling_into_more_shards_than_file_descriptors(tmp_path):
  """300 shards under RLIMIT_NOFILE 64 with the buffer budget forced small: no spool file stays
  open, and every shard holds its round-robin documents in order (read back one shard at a time)."""
  from array_record.python.array_record_module import ArrayRecordReader

  from scone_jax.data import shards
  proc = subprocess.run([sys.executable, "-c", _MANY_SHARDS, str(tmp_path)], capture_output=True, text=True,
                        env=dict(os.environ, PYTHONPATH=REPO), timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  rng = np.random.default_rng(1)
  lengths = [int(rng.integers(0, 40)) for _ in range(900)]
  for index in range(300):
    reader = ArrayRecordReader(os.path.join(str(tmp_path), shards.shard_name("train", index, 300)))
    records = reader.read(list(range(reader.num_records())))
    reader.close()
    want = [i for i in range(index, 900, 300)]
    assert [np.frombuffer(r, "<i4").tolist() for r in records] == [[i] * lengths[i] for i in want]
  assert not os.path.exists(tmp_path / ".spool" / "train")


_MEASURE = """
import json, sys
from scone_jax.data import prepare
def kb(key):
  for line in open("/proc/self/status"):
    if line.startswith(key + ":"):
      return int(line.split()[1])
import tokenizers, array_record.python.array_record_module  # imported before the baseline
base = kb("VmRSS")
with open("/proc/self/clear_refs", "w") as f:   # resets VmHWM to the current RSS
  f.write("5")
prepare.prepare([sys.argv[1]], sys.argv[2], tokenizer=sys.argv[3], register=False)
print(json.dumps({"base_kb": base, "peak_kb": kb("VmHWM")}))
"""


@pytest.mark.slow
def test_a_jsonl_larger_than_the_memory_cap_prepares_under_it(tmp_path, tok):
  """A 200 MB jsonl prepares with under a quarter of its size in extra resident memory (peak RSS,
  VmHWM, over the RSS before prepare): ~20 MB here. Reading the file whole takes ~600 MB (bytes,
  text and lines). The documents repeat two long words, so that tokenizing costs little (and the
  shards are small: the writers' memory is the next test's); the tokenizer runs on one thread, so
  the bound holds however many cores the machine has."""
  if not os.access("/proc/self/clear_refs", os.W_OK):
    pytest.skip("needs /proc/self/clear_refs (Linux) to reset the peak RSS")
  from tokenizers import decoders, models, pre_tokenizers, trainers
  words = ["x" * 120, "y" * 100]
  small = Tokenizer(models.BPE())
  small.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  small.decoder = decoders.ByteLevel()
  small.train_from_iterator([" ".join(words * 4)] * 4, trainers.BpeTrainer(
      vocab_size=400, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  small.add_special_tokens([EOT])
  small.save(str(tmp_path / "small.json"))
  path = tmp_path / "big.jsonl"
  body = " ".join(words * 16)
  size = 0
  with open(path, "w") as f:
    i = 0
    while size < 200 << 20:
      line = json.dumps({"text": f"{body} {i}"}) + "\n"
      f.write(line)
      size += len(line)
      i += 1
  env = dict(os.environ, TOKENIZERS_PARALLELISM="false", PYTHONPATH=REPO)
  proc = subprocess.run([sys.executable, "-c", _MEASURE, str(path), str(tmp_path / "data"), str(tmp_path / "small.json")],
                        capture_output=True, text=True, env=env, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  measured = json.loads(proc.stdout.strip().splitlines()[-1])
  extra = (measured["peak_kb"] - measured["base_kb"]) << 10
  print(f"jsonl {size >> 20} MB: extra peak RSS {extra >> 20} MB")
  assert extra < size // 4, f"prepare of a {size >> 20} MB jsonl took {extra >> 20} MB of extra resident memory"
