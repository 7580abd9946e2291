"""The f-gram vocabulary file: `FG/fgrams.parquet` (rank order) and `FG/meta.json`.

Row r of fgrams.parquet is f-gram id r: columns `tokens` (list<int32>) and `count` (int64),
ranked by (count desc, n asc, token ids asc) as docs/METHODS.md 1.1 fixes.
In memory the f-grams are kept flat: `flat` holds every f-gram's ids back to back and
`offsets[r]:offsets[r+1]` is f-gram r. FgramVocab is also what the counters (count.py,
beam_count.py) return, its meta holding what a counter knows (count.counted_meta).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from scone_jax.errors import UserError
from scone_jax.files import atomic_directory
from scone_jax.integrity import file_sha256 as _sha256

PARQUET = "fgrams.parquet"
META = "meta.json"


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


def save(vocab: FgramVocab, out_dir: str) -> None:
  """Writes FG atomically (scone_jax.files.atomic_directory): an interrupted write never leaves
  a directory that looks complete."""
  with atomic_directory(out_dir) as tmp:
    tokens = pa.ListArray.from_arrays(pa.array(vocab.offsets.astype(np.int32)), pa.array(vocab.flat, pa.int32()))
    table = pa.table({"tokens": tokens, "count": pa.array(vocab.counts, pa.int64())})
    pq.write_table(table, os.path.join(tmp, PARQUET))
    meta = dataclasses.replace(vocab.meta, num_fgrams=len(vocab), parquet_sha256=_sha256(os.path.join(tmp, PARQUET)))
    meta = dataclasses.replace(meta, meta_sha256=meta.content_sha256())
    with open(os.path.join(tmp, META), "w") as f:
      json.dump(dataclasses.asdict(meta), f, indent=2, sort_keys=True)


def load(fg_dir: str, verify: bool = True) -> FgramVocab:
  """Reads FG; refuses a directory whose parquet does not match the hash in its meta.json."""
  meta_path, pq_path = os.path.join(fg_dir, META), os.path.join(fg_dir, PARQUET)
  for p in (meta_path, pq_path):
    if not os.path.isfile(p):
      raise UserError(f"{p!r} does not exist: build it with `scone-jax fgrams build --out {fg_dir}`")
  try:
    with open(meta_path) as f:
      meta = FgramMeta(**json.load(f))
  except (json.JSONDecodeError, TypeError) as e:
    raise UserError(f"{meta_path!r} is not a valid f-gram meta.json ({e}); rebuild the f-grams") from e
  if meta.meta_sha256 and meta.content_sha256() != meta.meta_sha256:
    raise UserError(f"{meta_path!r} does not match its own sha256 (edited or corrupted); rebuild the f-grams")
  if verify and meta.parquet_sha256 and _sha256(pq_path) != meta.parquet_sha256:
    raise UserError(f"{pq_path!r} does not match the sha256 in its meta.json (corrupted?); rebuild the f-grams")
  try:
    table = pq.read_table(pq_path, columns=["tokens", "count"])
  except (pa.ArrowException, OSError, KeyError) as e:
    raise UserError(f"{pq_path!r} is not an f-gram table with columns tokens and count ({' '.join(str(e).split())[:160]}); "
                    "rebuild the f-grams") from e
  tokens = table.column("tokens").combine_chunks()
  offsets = np.asarray(tokens.offsets, dtype=np.int64)
  flat = np.asarray(tokens.values, dtype=np.int32)
  counts = np.asarray(table.column("count"), dtype=np.int64)
  vocab = FgramVocab(flat, offsets - offsets[0], counts, meta)
  _check_against_meta(vocab, pq_path)
  return vocab


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
