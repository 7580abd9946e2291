"""The grain input pipeline: shards -> shuffled documents -> packed rows -> per-process batches.

Row streams. The global batch has B rows; row s of every step comes from stream s, which reads
documents s, s+B, s+2B, ... of the globally shuffled (and per-epoch reshuffled) document order and
packs them with concat-then-split. Process p of P owns streams [p*B/P, (p+1)*B/P) and reads only
their documents. So the global batch of step t is the same whatever the number of processes, which
is what makes multi-host runs reproduce single-host runs exactly.

Every packed row carries (all int32 [L]):
  inputs       [BOS, x_1, ..., x_m] pieces    targets   [x_1, ..., x_m, EOS] pieces
  segment_ids  1, 2, ... per document piece, 0 = padding
  positions    position within the piece's segment (restart at 0 in every segment)
Attention and loss never cross segments (the model masks by segment id; loss weight = segment > 0).
Extra per-row features (f-gram matches) and per-batch features (distinct f-grams) are added by
`row_features` / `batch_features` callables.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable, Iterator, Sequence

import grain
import numpy as np

from scone_jax.data import shards
from scone_jax.errors import UserError

Row = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class PipelineSpec:
  data_dir: str
  split: str
  seq_len: int
  global_batch: int
  seed: int = 0
  process_index: int = 0
  process_count: int = 1
  prefetch: int = 2
  shuffle: bool = True   # train: shuffled and repeated forever; eval: one ordered pass
  row_features: tuple[Callable[[Row], Row], ...] = ()
  batch_features: tuple[Callable[[Row], Row], ...] = ()
  # Per-token features of whole documents, added before packing and split with the tokens (each
  # callable has `fields`: the names it adds, arrays [n, ...] over the document's n inputs).
  document_features: tuple[Callable[[Row], Row], ...] = ()
  # (field, directory): record i of a shard of that directory (same shard names as DATA) holds a
  # uint8 per input of document i, given to the document as `field` (SCONE's pre-computed tags).
  sidecar: tuple[str, str] | None = None

  def __post_init__(self):
    assert self.global_batch % self.process_count == 0, "checked by the caller"

  @property
  def local_streams(self) -> range:
    per = self.global_batch // self.process_count
    return range(self.process_index * per, (self.process_index + 1) * per)


class _ToExample(grain.transforms.Map):
  def __init__(self, bos: int, eos: int, sidecar: str | None = None, features=()):
    self.bos, self.eos, self.sidecar, self.features = bos, eos, sidecar, features

  def map(self, record) -> Row:
    if self.sidecar is not None:
      record, extra = record
    ids = shards.decode_document(record)
    doc = {"inputs": np.concatenate([[self.bos], ids]).astype(np.int32),
           "targets": np.concatenate([ids, [self.eos]]).astype(np.int32)}
    if self.sidecar is not None:
      values = np.frombuffer(extra, np.uint8).astype(np.int32)
      if len(values) != len(doc["inputs"]):
        raise UserError(f"{self.sidecar}: a document of {len(ids)} tokens has {len(values)} values, not "
                        f"{len(doc['inputs'])}: the sidecar was made from other data")
      doc[self.sidecar] = values
    for fn in self.features:
      doc = fn(doc)
    return doc


class _Paired:
  """Record i of DATA's shards with record i of a sidecar directory's shards of the same names."""

  def __init__(self, paths: list[str], sidecar_paths: list[str]):
    self.a = grain.sources.ArrayRecordDataSource(paths)
    self.b = grain.sources.ArrayRecordDataSource(sidecar_paths)
    if len(self.a) != len(self.b):
      raise UserError(f"{os.path.dirname(sidecar_paths[0])!r} holds {len(self.b)} records for the "
                      f"{len(self.a)} documents of {os.path.dirname(paths[0])!r}: it was made from other data")

  def __len__(self) -> int:
    return len(self.a)

  def __getitem__(self, i):
    return self.a[i], self.b[i]


def segment_positions(segment_ids: np.ndarray) -> np.ndarray:
  """Position of every token within its segment, restarting at 0 at each segment start."""
  n = segment_ids.shape[-1]
  idx = np.arange(n, dtype=np.int32)
  starts = np.concatenate([[True], segment_ids[1:] != segment_ids[:-1]])
  start_idx = np.maximum.accumulate(np.where(starts, idx, 0))
  return (idx - start_idx).astype(np.int32)


class _FinishRow(grain.transforms.Map):
  def __init__(self, fields: tuple[str, ...]):
    self.fields = fields

  def map(self, row: Row) -> Row:
    seg = row["inputs_segment_ids"].astype(np.int32)
    return {"inputs": row["inputs"].astype(np.int32), "targets": row["targets"].astype(np.int32),
            "segment_ids": seg, "positions": np.where(seg > 0, segment_positions(seg), 0).astype(np.int32),
            **{f: row[f] for f in self.fields}}


def document_fields(spec: PipelineSpec) -> tuple[str, ...]:
  fields = [spec.sidecar[0]] if spec.sidecar else []
  for fn in spec.document_features:
    fields += [f for f in fn.fields if f not in fields]
  return tuple(fields)


def _stream(spec: PipelineSpec, meta: shards.DataMeta, paths: list[str], stream: int,
            sidecar_paths: list[str] | None) -> grain.IterDataset:
  source = grain.sources.ArrayRecordDataSource(paths) if sidecar_paths is None else _Paired(paths, sidecar_paths)
  ds = grain.MapDataset.source(source)
  if spec.shuffle:
    ds = ds.shuffle(seed=spec.seed).repeat(None)
  ds = ds[stream::spec.global_batch].map(_ToExample(meta.bos_id, meta.eos_id, spec.sidecar[0] if spec.sidecar else None,
                                                    spec.document_features))
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
  fields = document_fields(spec)
  it = grain.experimental.ConcatThenSplitIterDataset(
      it, length_struct={"inputs": spec.seq_len, "targets": spec.seq_len, **{f: spec.seq_len for f in fields}})
  it = it.map(_FinishRow(fields))
  for fn in spec.row_features:
    it = it.map(fn)
  return it


def _sidecar_paths(spec: PipelineSpec, paths: list[str]) -> list[str] | None:
  if spec.sidecar is None:
    return None
  out = [os.path.join(spec.sidecar[1], os.path.basename(p)) for p in paths]
  missing = [p for p in out if not os.path.isfile(p)]
  if missing:
    raise UserError(f"{missing[0]!r} is missing ({len(missing)} of the {len(out)} {spec.split} shards of "
                    f"{spec.sidecar[1]!r}): rebuild it")
  return out


def _stack(rows: Sequence[Row]) -> Row:
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def make_dataset(spec: PipelineSpec) -> grain.IterDataset:
  """This process's part of every global batch: dict of int32 [global_batch/P, seq_len]."""
  meta = shards.load_meta(spec.data_dir)
  paths = shards.shard_paths(spec.data_dir, spec.split)   # checked once, not once per stream
  extra = _sidecar_paths(spec, paths)
  streams = [_stream(spec, meta, paths, s, extra) for s in spec.local_streams]
  ds = grain.experimental.ZipIterDataset(streams, strict=False).map(_stack)
  for fn in spec.batch_features:
    ds = ds.map(fn)
  if spec.prefetch:
    ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=spec.prefetch)
  return ds


def first_batches(spec: PipelineSpec, n: int) -> list[Row]:
  """The first n batches of this process's pipeline (train or eval) before batch features: what
  a batch feature sizes its static shapes from (methods/base.py, `sample`)."""
  bare = dataclasses.replace(spec, batch_features=(), prefetch=0)
  batches = iter(make_dataset(bare)) if spec.shuffle else eval_batches(bare)
  out = []
  for batch in batches:
    out.append(batch)
    if len(out) == n:
      break
  return out


def eval_num_batches(spec: PipelineSpec) -> int:
  """Steps of one pass over a split: the longest of all streams (every process computes the same
  number, so that collectives stay in step); shorter streams are padded."""
  rows = [0] * spec.global_batch
  for i, doc in enumerate(shards.read_documents(spec.data_dir, spec.split)):
    rows[i % spec.global_batch] += len(doc) + 1
  return max(-(-t // spec.seq_len) for t in rows)


def eval_batches(spec: PipelineSpec) -> Iterator[Row]:
  """One ordered pass over a split, padded with empty rows up to eval_num_batches."""
  assert not spec.shuffle
  meta = shards.load_meta(spec.data_dir)
  paths = shards.shard_paths(spec.data_dir, spec.split)
  extra = _sidecar_paths(spec, paths)
  iters = [iter(_stream(spec, meta, paths, s, extra)) for s in spec.local_streams]
  empty = None
  for _ in range(eval_num_batches(spec)):
    rows = []
    for it in iters:
      row = next(it, None)
      rows.append(row)
      if row is not None and empty is None:
        empty = {k: np.zeros_like(v) for k, v in row.items()}
    if empty is None:
      empty = _empty_row(spec)
    batch = _stack([r if r is not None else empty for r in rows])
    for fn in spec.batch_features:
      batch = fn(batch)
    yield batch


def _empty_row(spec: PipelineSpec) -> Row:
  doc = {"inputs": np.zeros(1, np.int32), "targets": np.zeros(1, np.int32)}
  if spec.sidecar:
    doc[spec.sidecar[0]] = np.ones(1, np.int32)
  for fn in spec.document_features:
    doc = fn(doc)
  row = {k: np.zeros((spec.seq_len,) + v.shape[1:], v.dtype) for k, v in doc.items()}
  row.update({k: np.zeros(spec.seq_len, np.int32) for k in ("segment_ids", "positions")})
  for fn in spec.row_features:
    row = fn(row)
  return row
