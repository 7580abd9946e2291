"""Token shards: ArrayRecord files of documents, and the `meta.json` that describes them.

Layout of a prepared data directory DATA (the file contract of DESIGN.md):
  DATA/meta.json                         vocab size, special ids, counts, tokenizer sha256
  DATA/vocab.model | DATA/tokenizer.json SentencePiece model, or a Hugging Face tokenizer file
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
  # UTF-8 bytes of the documents' text per split (each document's text as read, no separators;
  # docs/METHODS.md 5): what bits per byte divides by. None: not recorded (pretokenized input,
  # or a directory written before it was): meta.json then has no `num_bytes`.
  num_bytes: dict[str, int] | None = None

  def validate(self, where: str) -> None:
    """Counts are non-negative whole numbers, the vocabulary is not empty and the special ids
    are distinct ids inside it (-1 = absent), except that BOS may be the EOS (GPT-2's
    `<|endoftext|>` is both)."""
    def bad(what):
      return UserError(f"{where} {what}; re-run `scone-jax prepare`")
    if isinstance(self.vocab_size, bool) or not isinstance(self.vocab_size, int) or self.vocab_size < 1:
      raise bad(f"has vocab_size {self.vocab_size!r}")
    ids = {"pad_id": self.pad_id, "eos_id": self.eos_id, "bos_id": self.bos_id, "unk_id": self.unk_id}
    for name, i in ids.items():
      if isinstance(i, bool) or not isinstance(i, int) or not -1 <= i < self.vocab_size:
        raise bad(f"has {name} {i!r}, not an id below vocab_size {self.vocab_size}")
    present = [i for name, i in ids.items() if i >= 0 and not (name == "bos_id" and i == self.eos_id)]
    if len(set(present)) != len(present):
      raise bad(f"gives two special tokens one id ({ids})")
    for field in ("num_documents", "num_tokens", "num_shards", "num_bytes"):
      counts = getattr(self, field)
      if field == "num_bytes" and counts is None:
        continue
      if not isinstance(counts, dict) or any(isinstance(v, bool) or not isinstance(v, int) or v < 0
                                             for v in counts.values()):
        raise bad(f"has {field} {counts!r}, not counts per split")

  @property
  def special_ids(self) -> tuple[int, ...]:
    return tuple(i for i in (self.pad_id, self.eos_id, self.bos_id, self.unk_id) if i >= 0)

  def to_json(self) -> dict:
    """meta.json's object; `num_bytes` only when recorded (so a directory written before it
    existed keeps its meta.json, and with it its fingerprint)."""
    out = dataclasses.asdict(self)
    if out["num_bytes"] is None:
      del out["num_bytes"]
    return out


def shard_name(split: str, index: int, count: int) -> str:
  return f"{split}-{index:05d}-of-{count:05d}.array_record"


def shard_paths(data_dir: str, split: str) -> list[str]:
  """The shard files of one split, as meta.json names them (num_shards): DATA is a closed set, so
  a missing shard, or a shard file meta.json does not list, is an error, never a smaller split."""
  if split not in SPLITS:
    raise UserError(f"split {split!r} is not one of {', '.join(SPLITS)}")
  count = load_meta(data_dir).num_shards.get(split, 0)
  if not count:
    raise UserError(f"no {split} shards in {data_dir!r}: run `scone-jax prepare --out {data_dir}` first")
  paths = [os.path.join(data_dir, shard_name(split, i, count)) for i in range(count)]
  missing = [p for p in paths if not os.path.isfile(p)]
  if missing:
    raise UserError(f"{missing[0]!r} is missing ({len(missing)} of the {count} {split} shards {data_dir}/meta.json "
                    "lists): the data directory is incomplete; re-run `scone-jax prepare`")
  stray = sorted(set(glob.glob(os.path.join(data_dir, f"{split}-*-of-*.array_record"))) - set(paths))
  if stray:
    raise UserError(f"{stray[0]!r} is not listed in {data_dir}/meta.json: remove it or re-run `scone-jax prepare`")
  return paths


def load_meta(data_dir: str) -> DataMeta:
  path = os.path.join(data_dir, META)
  if not os.path.isfile(path):
    raise UserError(f"{path!r} does not exist: point --data at a directory written by `scone-jax prepare`")
  try:
    with open(path) as f:
      raw = json.load(f)
    known = {f.name for f in dataclasses.fields(DataMeta)}
    meta = DataMeta(**{k: v for k, v in raw.items() if k in known})
  except (json.JSONDecodeError, TypeError, AttributeError) as e:
    raise UserError(f"{path!r} is not a valid meta.json ({e}); re-run `scone-jax prepare`") from e
  meta.validate(repr(path))
  return meta


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
    self.max_ids = [-1] * count   # the largest token id in each shard (meta.json `shard_max_id`)

  def write(self, ids) -> None:
    ids = np.asarray(ids)
    self._writers[self._next].write(encode_document(ids))
    if ids.size:
      self.max_ids[self._next] = max(self.max_ids[self._next], int(ids.max()))
    self._next = (self._next + 1) % len(self._writers)
    self.num_documents += 1
    self.num_tokens += len(ids)

  def shard_max_ids(self) -> dict[str, int]:
    return {os.path.basename(p): m for p, m in zip(self.paths, self.max_ids)}

  def close(self) -> None:
    for w in self._writers:
      w.close()


def _max_id(path: str) -> int:
  """The largest token id in a shard, reading every record (a shard that cannot be read whole,
  truncated or corrupted, is a UserError)."""
  try:
    reader = ArrayRecordReader(path)
    try:
      n, largest = reader.num_records(), -1
      for start in range(0, n, 1024):
        for record in reader.read(list(range(start, min(n, start + 1024)))):
          if len(record) % 4:
            raise RuntimeError(f"a record of {len(record)} bytes is not int32 token ids")
          doc = decode_document(record)
          if doc.size:
            largest = max(largest, int(doc.max()))
      return largest
    finally:
      reader.close()
  except RuntimeError as e:
    raise UserError(f"{path!r} cannot be read as a token shard (truncated or corrupted: "
                    f"{' '.join(str(e).split())[:120] or type(e).__name__}); re-run `scone-jax prepare`") from e


def read_records(path: str) -> Iterator[bytes]:
  """Every record of one ArrayRecord shard, in order, read 1024 at a time."""
  reader = ArrayRecordReader(path)
  try:
    n = reader.num_records()
    for start in range(0, n, 1024):
      yield from reader.read(list(range(start, min(n, start + 1024))))
  finally:
    reader.close()


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
  if not recorded:   # written before hashes were recorded: every record is read and decoded once
    for split in splits:
      for path in shard_paths(data_dir, split) if meta.num_documents.get(split) else []:
        largest = _max_id(path)
        if largest >= meta.vocab_size:
          raise UserError(f"{path!r} holds token id {largest}, outside the vocabulary of {meta.vocab_size} "
                          f"({data_dir}/meta.json): re-run `scone-jax prepare`")
    return
  max_ids = meta.extra.get("shard_max_id", {})
  for split in splits:
    for path in shard_paths(data_dir, split) if meta.num_documents.get(split) else []:
      name = os.path.basename(path)
      if name not in recorded:
        raise UserError(f"{path!r} is not listed in {data_dir}/meta.json: re-run `scone-jax prepare`")
      if file_sha256(path) != recorded[name]:
        raise UserError(f"{path!r} does not match the sha256 in meta.json (corrupted or replaced); "
                        "re-run `scone-jax prepare`")
      # Token ids inside the vocabulary: from meta.json once the hash vouches for the shard, else
      # (directories written before `shard_max_id` was recorded) by reading its documents.
      largest = max_ids[name] if name in max_ids else _max_id(path)
      if largest >= meta.vocab_size:
        raise UserError(f"{path!r} holds token id {largest}, outside the vocabulary of {meta.vocab_size} "
                        f"({data_dir}/meta.json): the shard was not written with this tokenizer; re-run `scone-jax prepare`")
  for name in recorded:
    if os.path.basename(name) != name:   # names in meta.json never point outside DATA
      raise UserError(f"{data_dir}/meta.json names a shard outside its directory: {name!r}")
