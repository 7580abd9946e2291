"""Token shards: ArrayRecord files of documents, and the `meta.json` that describes them.

Layout of a prepared data directory DATA (the file contract of DESIGN.md):
  DATA/meta.json                         vocab size, special ids, counts, tokenizer sha256
  DATA/vocab.model                       SentencePiece model
  DATA/{train,validation}-NNNNN-of-MMMMM.array_record
One record = one document as little-endian int32 token ids, no BOS/EOS (the pipeline adds them).
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
from typing import Iterator

import numpy as np
from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter

from scone_jax.errors import UserError
from scone_jax.files import atomic_write_json
from scone_jax.integrity import file_sha256

SPLITS = ("train", "validation")
META = "meta.json"
WRITER_OPTIONS = "group_size:1"  # one record per chunk: cheap random access for global shuffle


@dataclasses.dataclass(frozen=True)
class DataMeta:
  """What `meta.json` records about a prepared data directory."""
  vocab_size: int
  pad_id: int
  eos_id: int
  bos_id: int
  unk_id: int
  tokenizer_sha256: str
  num_documents: dict[str, int]
  num_tokens: dict[str, int]
  num_shards: dict[str, int]
  source: str = ""
  extra: dict = dataclasses.field(default_factory=dict)

  @property
  def special_ids(self) -> tuple[int, ...]:
    return tuple(i for i in (self.pad_id, self.eos_id, self.bos_id, self.unk_id) if i >= 0)

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


def shard_name(split: str, index: int, count: int) -> str:
  return f"{split}-{index:05d}-of-{count:05d}.array_record"


def shard_paths(data_dir: str, split: str) -> list[str]:
  """Sorted shard files of one split; a clear error if there are none."""
  if split not in SPLITS:
    raise UserError(f"split {split!r} is not one of {', '.join(SPLITS)}")
  paths = sorted(glob.glob(os.path.join(data_dir, f"{split}-*-of-*.array_record")))
  if not paths:
    raise UserError(f"no {split} shards in {data_dir!r}: run `scone-jax prepare --out {data_dir}` first")
  return paths


def load_meta(data_dir: str) -> DataMeta:
  path = os.path.join(data_dir, META)
  if not os.path.isfile(path):
    raise UserError(f"{path!r} does not exist: point --data at a directory written by `scone-jax prepare`")
  try:
    with open(path) as f:
      raw = json.load(f)
    known = {f.name for f in dataclasses.fields(DataMeta)}
    return DataMeta(**{k: v for k, v in raw.items() if k in known})
  except (json.JSONDecodeError, TypeError) as e:
    raise UserError(f"{path!r} is not a valid meta.json ({e}); re-run `scone-jax prepare`") from e


def write_meta(data_dir: str, meta: DataMeta) -> None:
  """Writes meta.json atomically (temp file + rename): readers never see half a file."""
  atomic_write_json(os.path.join(data_dir, META), meta.to_json(), indent=2, sort_keys=True)


def encode_document(ids) -> bytes:
  return np.asarray(ids, dtype="<i4").tobytes()


def decode_document(record: bytes) -> np.ndarray:
  return np.frombuffer(record, dtype="<i4").astype(np.int32)


class ShardWriter:
  """Writes documents round-robin into `count` ArrayRecord shards of one split."""

  def __init__(self, data_dir: str, split: str, count: int):
    self.paths = [os.path.join(data_dir, shard_name(split, i, count)) for i in range(count)]
    self._writers = [ArrayRecordWriter(p, WRITER_OPTIONS) for p in self.paths]
    self._next = 0
    self.num_documents = 0
    self.num_tokens = 0

  def write(self, ids) -> None:
    self._writers[self._next].write(encode_document(ids))
    self._next = (self._next + 1) % len(self._writers)
    self.num_documents += 1
    self.num_tokens += len(ids)

  def close(self) -> None:
    for w in self._writers:
      w.close()


def read_documents(data_dir: str, split: str) -> Iterator[np.ndarray]:
  """Yields every document of a split as an int32 array, shard by shard, in record order."""
  for path in shard_paths(data_dir, split):
    reader = ArrayRecordReader(path)
    try:
      n = reader.num_records()
      for start in range(0, n, 1024):
        for record in reader.read(list(range(start, min(n, start + 1024)))):
          yield decode_document(record)
    finally:
      reader.close()


def data_fingerprint(data_dir: str) -> str:
  """sha256 of the canonical meta.json: it names the tokenizer, counts and shard hashes, so
  two data directories with equal fingerprints hold the same tokens."""
  meta = load_meta(data_dir)
  blob = json.dumps(meta.to_json(), sort_keys=True).encode()
  return hashlib.sha256(blob).hexdigest()


def verify_shards(data_dir: str, splits: tuple[str, ...] = SPLITS) -> None:
  """Checks every shard of `splits` against the sha256 recorded in meta.json; corrupted or
  swapped shards are refused before anything is decoded. Directories written before hashes were
  recorded (no `shard_sha256`) are accepted as they are."""
  meta = load_meta(data_dir)
  recorded = meta.extra.get("shard_sha256")
  if not recorded:
    return
  for split in splits:
    for path in shard_paths(data_dir, split) if meta.num_documents.get(split) else []:
      name = os.path.basename(path)
      if name not in recorded:
        raise UserError(f"{path!r} is not listed in {data_dir}/meta.json: re-run `scone-jax prepare`")
      if file_sha256(path) != recorded[name]:
        raise UserError(f"{path!r} does not match the sha256 in meta.json (corrupted or replaced); "
                        "re-run `scone-jax prepare`")
  for name in recorded:
    if os.path.basename(name) != name:   # names in meta.json never point outside DATA
      raise UserError(f"{data_dir}/meta.json names a shard outside its directory: {name!r}")
