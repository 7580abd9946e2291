"""The f-gram vocabulary file: `FG/fgrams.parquet` (rank order) and `FG/meta.json`.

Row r of fgrams.parquet is f-gram id r: columns `tokens` (large_list<int32>, int64 offsets: no
2^31-token limit; readers also accept list<int32>) and `count` (int64), ranked by (count desc,
n asc, token ids asc) as docs/METHODS.md 1.1 fixes.

Sharded vocabularies. A vocabulary of more than `rows_per_file` rows (default 2^22) is written as
`fgrams-00000-of-000NN.parquet` ... in rank order: file k holds rows [k * rows_per_file, ...).
The layout depends only on (number of rows, rows_per_file), and every file is written by
write_rows, so the local and the Beam runner write the same bytes. meta.json's parquet_sha256 is
the file's sha256 for one file (what runs record as fgrams_sha256, unchanged) and, for shards,
the sha256 of the `sha256sum`-style listing "<file sha256>  <name>\n" of every shard in order.
In memory the f-grams are kept flat: `flat` holds every f-gram's ids back to back and
`offsets[r]:offsets[r+1]` is f-gram r. FgramVocab is also what the counters (count.py,
beam_count.py) return, its meta holding what a counter knows (count.counted_meta).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from scone_jax.errors import UserError
from scone_jax.files import atomic_directory
from scone_jax.integrity import file_sha256 as _sha256

PARQUET = "fgrams.parquet"
META = "meta.json"
ROWS_PER_FILE = 1 << 22
_SHARD = re.compile(r"^fgrams-(\d{5})-of-(\d{5})\.parquet$")


def file_names(num_rows: int, rows_per_file: int = ROWS_PER_FILE) -> list[str]:
  """The parquet file names of a vocabulary of num_rows rows: [PARQUET], or the shards in order."""
  num_files = max(1, -(-num_rows // rows_per_file))
  if num_files == 1:
    return [PARQUET]
  return [f"fgrams-{k:05d}-of-{num_files:05d}.parquet" for k in range(num_files)]


def combined_sha256(names: list[str], shas: list[str]) -> str:
  """parquet_sha256 of a vocabulary: the file's sha256 for one file, else the listing's sha256."""
  if names == [PARQUET]:
    return shas[0]
  listing = "".join(f"{sha}  {name}\n" for name, sha in zip(names, shas))
  return hashlib.sha256(listing.encode()).hexdigest()


def parquet_files(fg_dir: str) -> list[str]:
  """The parquet file names in FG, in rank order (refuses both layouts at once, or missing shards)."""
  names = os.listdir(fg_dir) if os.path.isdir(fg_dir) else []
  shards = sorted(n for n in names if _SHARD.match(n))
  if PARQUET in names and shards:
    raise UserError(f"{fg_dir!r} holds both {PARQUET} and {shards[0]}...: rebuild the f-grams")
  if not shards:
    return [PARQUET]
  total = int(_SHARD.match(shards[0]).group(2))
  expected = [f"fgrams-{k:05d}-of-{total:05d}.parquet" for k in range(total)]
  if shards != expected:
    missing = sorted(set(expected) - set(shards)) or sorted(set(shards) - set(expected))
    raise UserError(f"{fg_dir!r} has {len(shards)} f-gram shards, not the {total} its names say "
                    f"({missing[0]} missing or extra): rebuild the f-grams")
  return shards


def rows_table(flat: np.ndarray, offsets: np.ndarray, counts: np.ndarray) -> pa.Table:
  """The parquet table of f-gram rows: tokens large_list<int32> (int64 offsets), count int64."""
  offsets = np.asarray(offsets, dtype=np.int64)
  values = np.asarray(flat, dtype=np.int32)[offsets[0]:offsets[-1]] if len(offsets) else np.empty(0, np.int32)
  tokens = pa.LargeListArray.from_arrays(pa.array(offsets - offsets[0] if len(offsets) else [0], pa.int64()),
                                         pa.array(values, pa.int32()))
  return pa.table({"tokens": tokens, "count": pa.array(np.asarray(counts, dtype=np.int64), pa.int64())})


def write_rows(f, flat: np.ndarray, offsets: np.ndarray, counts: np.ndarray) -> None:
  """Writes f-gram rows as one parquet file to a path or binary file object (the one writer of
  every f-gram file: same rows, same bytes)."""
  pq.write_table(rows_table(flat, offsets, counts), f)


@dataclasses.dataclass(frozen=True)
class FgramMeta:
  max_n: int            # K
  size: int             # S requested
  min_count: int        # c_min
  tokens_counted: int   # tokens in the counted split
  data_fingerprint: str  # scone_jax.data.shards.data_fingerprint of DATA ("" from a counter)
  num_fgrams: int       # rows actually written (<= size when few n-grams reach c_min)
  vocab_size: int
  parquet_sha256: str = ""
  meta_sha256: str = ""   # of the other fields (canonical JSON): meta.json has its own hash

  def content_sha256(self) -> str:
    fields = {k: v for k, v in dataclasses.asdict(self).items() if k != "meta_sha256"}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


@dataclasses.dataclass
class FgramVocab:
  flat: np.ndarray     # int32 [sum of lengths]
  offsets: np.ndarray  # int64 [S + 1]
  counts: np.ndarray   # int64 [S]
  meta: FgramMeta

  def __len__(self) -> int:
    return len(self.counts)

  @property
  def lengths(self) -> np.ndarray:
    return np.diff(self.offsets).astype(np.int32)

  def fgram(self, r: int) -> tuple[int, ...]:
    return tuple(int(t) for t in self.flat[self.offsets[r]:self.offsets[r + 1]])

  def token_matrix(self) -> tuple[np.ndarray, np.ndarray]:
    """(tokens int32 [S, K] right-padded with -1, lengths int32 [S]) of every f-gram, in id order."""
    k = self.meta.max_n
    lengths = self.lengths.astype(np.int32)
    tokens = np.full((len(self), k), -1, np.int32)
    cols = np.arange(k)
    mask = cols[None, :] < lengths[:, None]
    tokens[mask] = self.flat[(self.offsets[:-1, None] + cols[None, :])[mask]]
    return tokens, lengths

  def as_tuples(self) -> list[tuple[int, ...]]:
    return [self.fgram(r) for r in range(len(self))]

  @classmethod
  def from_tuples(cls, fgrams, counts, meta: FgramMeta) -> "FgramVocab":
    lengths = np.array([len(g) for g in fgrams], dtype=np.int64)
    offsets = np.zeros(len(fgrams) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.fromiter((t for g in fgrams for t in g), dtype=np.int32, count=int(offsets[-1]))
    return cls(flat, offsets, np.asarray(counts, dtype=np.int64), meta)


def save(vocab: FgramVocab, out_dir: str, rows_per_file: int = ROWS_PER_FILE) -> None:
  """Writes FG atomically (scone_jax.files.atomic_directory): an interrupted write never leaves
  a directory that looks complete. More than rows_per_file rows go to shards (file_names)."""
  with atomic_directory(out_dir) as tmp:
    names = file_names(len(vocab), rows_per_file)
    for k, name in enumerate(names):
      lo, hi = k * rows_per_file, min(len(vocab), (k + 1) * rows_per_file)
      write_rows(os.path.join(tmp, name), vocab.flat, vocab.offsets[lo:hi + 1], vocab.counts[lo:hi])
    write_meta(tmp, vocab.meta, names, len(vocab))


def write_meta(fg_dir: str, meta: FgramMeta, names: list[str], num_fgrams: int) -> FgramMeta:
  """Writes FG/meta.json for the parquet files `names` already in fg_dir (their combined sha256)."""
  digest = combined_sha256(names, [_sha256(os.path.join(fg_dir, n)) for n in names])
  meta = dataclasses.replace(meta, num_fgrams=num_fgrams, parquet_sha256=digest)
  meta = dataclasses.replace(meta, meta_sha256=meta.content_sha256())
  with open(os.path.join(fg_dir, META), "w") as f:
    json.dump(dataclasses.asdict(meta), f, indent=2, sort_keys=True)
  return meta


def load_meta(fg_dir: str) -> FgramMeta:
  """FG's meta.json alone (checked against its own hash): what a process needs that reads
  pre-computed tags instead of the vocabulary (K, S, the identities)."""
  meta_path = os.path.join(fg_dir, META)
  if not os.path.isfile(meta_path):
    raise UserError(f"{meta_path!r} does not exist: build it with `scone-jax fgrams build --out {fg_dir}`")
  try:
    with open(meta_path) as f:
      meta = FgramMeta(**json.load(f))
  except (json.JSONDecodeError, TypeError) as e:
    raise UserError(f"{meta_path!r} is not a valid f-gram meta.json ({e}); rebuild the f-grams") from e
  if meta.meta_sha256 and meta.content_sha256() != meta.meta_sha256:
    raise UserError(f"{meta_path!r} does not match its own sha256 (edited or corrupted); rebuild the f-grams")
  return meta


def fgrams_sha256(fg_dir: str, meta: FgramMeta) -> str:
  """The identity of FG's f-gram file(s), as runs, stores and tags record it: meta.json's
  parquet_sha256, or (vocabularies written before it was recorded) computed the same way."""
  if meta.parquet_sha256:
    return meta.parquet_sha256
  names = parquet_files(fg_dir)
  return combined_sha256(names, [_sha256(os.path.join(fg_dir, n)) for n in names])


def verify_files(fg_dir: str, meta: FgramMeta) -> None:
  """FG's parquet files hash to meta.json's parquet_sha256 (read in blocks, never loaded): one-line
  UserError if not."""
  names = parquet_files(fg_dir)
  if meta.parquet_sha256 and combined_sha256(names, [_sha256(os.path.join(fg_dir, n)) for n in names]) != (
      meta.parquet_sha256):
    pq_path = os.path.join(fg_dir, names[0]) if len(names) == 1 else os.path.join(fg_dir, "fgrams-*.parquet")
    raise UserError(f"{pq_path!r} does not match the sha256 in its meta.json (corrupted?); rebuild the f-grams")


def load(fg_dir: str, verify: bool = True) -> FgramVocab:
  """Reads FG (one parquet file or shards); refuses a directory whose parquet does not match the
  hash in its meta.json."""
  meta_path = os.path.join(fg_dir, META)
  names = parquet_files(fg_dir)
  for p in (meta_path, os.path.join(fg_dir, names[0])):
    if not os.path.isfile(p):
      raise UserError(f"{p!r} does not exist: build it with `scone-jax fgrams build --out {fg_dir}`")
  pq_path = os.path.join(fg_dir, names[0]) if len(names) == 1 else os.path.join(fg_dir, "fgrams-*.parquet")
  meta = load_meta(fg_dir)
  if verify:
    verify_files(fg_dir, meta)
  flats, lengths, counts = [], [], []
  for name in names:
    flat, offsets, count = read_rows(os.path.join(fg_dir, name))
    flats.append(flat)
    lengths.append(np.diff(offsets))
    counts.append(count)
  offsets = np.zeros(sum(len(c) for c in counts) + 1, dtype=np.int64)
  np.cumsum(np.concatenate(lengths), out=offsets[1:])
  vocab = FgramVocab(np.concatenate(flats), offsets, np.concatenate(counts), meta)
  _check_against_meta(vocab, pq_path)
  return vocab


def read_rows(path_or_file, where: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(flat int32, offsets int64 from 0, counts int64) of one f-gram parquet file, tokens as
  list<int32> or large_list<int32>."""
  where = where or str(path_or_file)
  try:
    table = pq.read_table(path_or_file, columns=["tokens", "count"])
    tokens = table.column("tokens")
    if not (pa.types.is_list(tokens.type) or pa.types.is_large_list(tokens.type)):
      raise KeyError(f"column tokens is {tokens.type}, not a list")
  except (pa.ArrowException, OSError, KeyError) as e:
    raise UserError(f"{where!r} is not an f-gram table with columns tokens and count ({' '.join(str(e).split())[:160]}); "
                    "rebuild the f-grams") from e
  flats, lengths = [], []
  for chunk in tokens.chunks:  # per chunk: 32-bit list offsets never need to span the whole column
    offsets = np.asarray(chunk.offsets, dtype=np.int64)
    flats.append(np.asarray(chunk.values, dtype=np.int32)[offsets[0]:offsets[-1]])
    lengths.append(np.diff(offsets))
  offsets = np.zeros(len(tokens) + 1, dtype=np.int64)
  if lengths:
    np.cumsum(np.concatenate(lengths), out=offsets[1:])
  flat = np.concatenate(flats) if flats else np.empty(0, np.int32)
  return flat, offsets, np.asarray(table.column("count"), dtype=np.int64)


def _check_against_meta(vocab: FgramVocab, where: str) -> None:
  """The parquet agrees with its meta.json: row count, lengths 2..K, ids inside the vocabulary,
  counts at least c_min and in rank order (docs/METHODS.md 1.1)."""
  meta, lengths = vocab.meta, vocab.lengths
  problems = []
  if len(vocab) != meta.num_fgrams:
    problems.append(f"{len(vocab)} rows, meta.json says num_fgrams {meta.num_fgrams}")
  if len(vocab) and (lengths.min() < 2 or lengths.max() > meta.max_n):
    problems.append(f"f-gram lengths {int(lengths.min())}..{int(lengths.max())}, not 2..{meta.max_n}")
  if vocab.flat.size and (vocab.flat.min() < 0 or vocab.flat.max() >= meta.vocab_size):
    problems.append(f"token ids {int(vocab.flat.min())}..{int(vocab.flat.max())}, outside the vocabulary of {meta.vocab_size}")
  if len(vocab) and (vocab.counts.min() < meta.min_count or np.any(np.diff(vocab.counts) > 0)):
    problems.append(f"counts not in rank order at or above min_count {meta.min_count}")
  if problems:
    raise UserError(f"{where!r} does not agree with its meta.json ({'; '.join(problems)}); rebuild the f-grams")
