"""Every artifact is a closed, self-describing set, checked by one function per kind:
DATA (data/shards.py: shards = meta.json's names, their hashes, counts, special ids, token ids),
FG (fgram/vocab.py: meta.json's own hash, the parquet against its meta.json), STORE
(serve/store.py: array metadata against the manifest, a missing chunk is an error on every
tier), checkpoints (train/checkpoint.py: a step is restored only against a complete record)."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scone_jax.cli import main
from scone_jax.data import shards
from scone_jax.errors import UserError
from scone_jax.export.manifest import identity_of
from scone_jax.fgram import vocab as fgram_vocab
from scone_jax.fgram.build import build
from scone_jax.integrity import file_sha256
from scone_jax.serve.store import open_store
from scone_jax.train.restore import load_run
from tests.helpers import make_data


def _meta(path):
  with open(os.path.join(path, "meta.json")) as f:
    return json.load(f)


def _write_meta(path, raw):
  with open(os.path.join(path, "meta.json"), "w") as f:
    json.dump(raw, f)


@pytest.fixture()
def data(tmp_path):
  return make_data(str(tmp_path / "data"), docs=40)[0]


def test_a_deleted_shard_is_an_error_not_a_smaller_split(data):
  os.remove(os.path.join(data, shards.shard_name("train", 1, 2)))
  with pytest.raises(UserError, match="is missing .1 of the 2 train shards"):
    shards.shard_paths(data, "train")
  with pytest.raises(UserError, match="is missing"):
    list(shards.read_documents(data, "train"))


def test_a_stray_shard_is_refused(data):
  shutil.copyfile(os.path.join(data, shards.shard_name("train", 0, 2)), os.path.join(data, "train-00000-of-00003.array_record"))
  with pytest.raises(UserError, match="is not listed in"):
    shards.shard_paths(data, "train")


def test_token_ids_outside_the_vocabulary_are_refused_before_training(data):
  path = os.path.join(data, shards.shard_name("train", 0, 2))
  docs = [np.frombuffer(r, "<i4") for r in _records(path)]
  docs[0] = docs[0].copy()
  docs[0][0] = 64   # vocab_size is 64
  os.remove(path)
  w = shards.ArrayRecordWriter(path, shards.WRITER_OPTIONS)
  for d in docs:
    w.write(shards.encode_document(d))
  w.close()
  raw = _meta(data)
  raw["extra"]["shard_sha256"][os.path.basename(path)] = file_sha256(path)   # a consistent hash
  _write_meta(data, raw)
  with pytest.raises(UserError, match="holds token id 64, outside the vocabulary of 64"):
    shards.verify_shards(data)


def _records(path):
  reader = shards.ArrayRecordReader(path)
  try:
    return reader.read(list(range(reader.num_records())))
  finally:
    reader.close()


@pytest.mark.parametrize("field,value,needle", [("bos_id", 64, "bos_id 64"), ("eos_id", 0, "two special tokens"),
                                                ("vocab_size", "64", "vocab_size '64'"),
                                                ("num_tokens", {"train": -1}, "num_tokens")])
def test_meta_json_must_describe_a_valid_vocabulary(data, field, value, needle):
  raw = _meta(data)
  raw[field] = value
  _write_meta(data, raw)
  with pytest.raises(UserError, match=needle):
    shards.load_meta(data)


def test_fgram_meta_has_its_own_hash_and_agrees_with_its_parquet(data, tmp_path):
  fg = str(tmp_path / "fg")
  build(data, fg, max_n=3, size=20, min_count=2)
  raw = _meta(fg)
  assert raw["meta_sha256"]
  raw["min_count"] = 1   # edited by hand
  _write_meta(fg, raw)
  with pytest.raises(UserError, match="does not match its own sha256"):
    fgram_vocab.load(fg)
  # A parquet rewritten with fewer rows (its hash updated, meta.json from before hashes existed).
  build(data, fg, max_n=3, size=20, min_count=2)
  table = pq.read_table(os.path.join(fg, "fgrams.parquet")).slice(0, 5)
  pq.write_table(table, os.path.join(fg, "fgrams.parquet"))
  raw = _meta(fg)
  raw["parquet_sha256"], raw["meta_sha256"] = file_sha256(os.path.join(fg, "fgrams.parquet")), ""
  _write_meta(fg, raw)
  with pytest.raises(UserError, match="does not agree with its meta.json .5 rows"):
    fgram_vocab.load(fg)
  pq.write_table(pa.table({"tokens": table.column("tokens")}), os.path.join(fg, "fgrams.parquet"))
  raw["parquet_sha256"] = file_sha256(os.path.join(fg, "fgrams.parquet"))
  _write_meta(fg, raw)
  with pytest.raises(UserError, match="columns tokens and count"):
    fgram_vocab.load(fg)


@pytest.fixture(scope="module")
def store_copy(tmp_path_factory, tiny_scone_run):
  return tiny_scone_run, tmp_path_factory.mktemp("artifacts")


def test_a_missing_store_chunk_is_an_error_on_every_tier(store_copy):
  run, tmp = store_copy
  url = str(tmp / "store_missing")
  shutil.copytree(run["store"], url)
  os.remove(os.path.join(url, "embeddings", "c", "1", "0"))   # the second shard of rows
  expected = identity_of(load_run(run["workdir"]))
  with pytest.raises(UserError, match="could not be read.*missing"):
    open_store(url, "ram", expected=expected)
  disk = open_store(url, "disk", expected=expected)
  np.testing.assert_array_equal(disk.fetch(np.array([0, 1])).result().shape, (2, 32))   # shard 0 is there
  with pytest.raises(UserError, match="could not be read.*missing"):
    disk.fetch(np.array([70])).result()


def test_store_metadata_must_match_its_manifest(store_copy):
  run, tmp = store_copy
  url = str(tmp / "store_meta")
  shutil.copytree(run["store"], url)
  path = os.path.join(url, "embeddings", "zarr.json")
  raw = json.load(open(path))
  raw["codecs"][0]["configuration"]["chunk_shape"] = [32, 32]
  json.dump(raw, open(path, "w"))
  with pytest.raises(UserError, match="is stored as .* but the manifest says"):
    open_store(url, "disk")


@pytest.mark.slow   # three evaluations in-process: keeps `make test-fast` under its 3 minutes
def test_a_checkpoint_step_without_a_complete_hash_record_is_not_restored(store_copy, capsys):
  run, tmp = store_copy
  workdir = str(tmp / "run")
  shutil.copytree(run["workdir"], workdir)
  record = os.path.join(workdir, "checkpoint_hashes", "4.json")
  hashes = json.load(open(record))
  json.dump(dict(list(hashes.items())[1:]), open(record, "w"))   # one file left out of the record
  capsys.readouterr()
  assert main(["eval", "--workdir", workdir, "--max_batches", "1"]) == 2
  assert "does not match its hash record" in capsys.readouterr().err
  os.remove(record)
  assert main(["eval", "--workdir", workdir, "--max_batches", "1"]) == 2
  assert "has no hash record" in capsys.readouterr().err
  assert main(["eval", "--workdir", workdir, "--max_batches", "1", "--step", "2"]) == 0   # step 2 is fine
  assert dataclasses.is_dataclass(shards.DataMeta)


def test_an_unreachable_bucket_is_a_one_line_error_not_a_hang(monkeypatch):
  """A server on loopback that accepts connections and never answers stands in for a bucket that
  cannot be reached; the store open gives up after the remote timeout with one line."""
  import socket
  import time

  from scone_jax.export import layout as L
  silent = socket.socket()
  silent.bind(("127.0.0.1", 0))
  silent.listen(8)
  try:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"127.0.0.1:{silent.getsockname()[1]}")
    monkeypatch.setattr(L, "REMOTE_TIMEOUT_S", 2.0)
    t0 = time.time()
    with pytest.raises(UserError, match="did not answer within 2 s"):
      open_store("gs://scone-jax-test-bucket/store/", "remote")
    assert time.time() - t0 < 30
  finally:
    silent.close()
