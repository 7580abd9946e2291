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
from typing import Callable, Iterator, Sequence

import grain
import numpy as np

from scone_jax.data import shards

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

  def __post_init__(self):
    assert self.global_batch % self.process_count == 0, "checked by the caller"

  @property
  def local_streams(self) -> range:
    per = self.global_batch // self.process_count
    return range(self.process_index * per, (self.process_index + 1) * per)


class _ToExample(grain.transforms.Map):
  def __init__(self, bos: int, eos: int):
    self.bos, self.eos = bos, eos

  def map(self, record: bytes) -> Row:
    ids = shards.decode_document(record)
    return {"inputs": np.concatenate([[self.bos], ids]).astype(np.int32),
            "targets": np.concatenate([ids, [self.eos]]).astype(np.int32)}


def segment_positions(segment_ids: np.ndarray) -> np.ndarray:
  """Position of every token within its segment, restarting at 0 at each segment start."""
  n = segment_ids.shape[-1]
  idx = np.arange(n, dtype=np.int32)
  starts = np.concatenate([[True], segment_ids[1:] != segment_ids[:-1]])
  start_idx = np.maximum.accumulate(np.where(starts, idx, 0))
  return (idx - start_idx).astype(np.int32)


def _finish_row(row: Row) -> Row:
  seg = row["inputs_segment_ids"].astype(np.int32)
  return {"inputs": row["inputs"].astype(np.int32), "targets": row["targets"].astype(np.int32),
          "segment_ids": seg, "positions": np.where(seg > 0, segment_positions(seg), 0).astype(np.int32)}


def _stream(spec: PipelineSpec, meta: shards.DataMeta, paths: list[str], stream: int) -> grain.IterDataset:
  source = grain.sources.ArrayRecordDataSource(paths)
  ds = grain.MapDataset.source(source)
  if spec.shuffle:
    ds = ds.shuffle(seed=spec.seed).repeat(None)
  ds = ds[stream::spec.global_batch].map(_ToExample(meta.bos_id, meta.eos_id))
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
  it = grain.experimental.ConcatThenSplitIterDataset(
      it, length_struct={"inputs": spec.seq_len, "targets": spec.seq_len})
  it = it.map(_finish_row)
  for fn in spec.row_features:
    it = it.map(fn)
  return it


def _stack(rows: Sequence[Row]) -> Row:
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def make_dataset(spec: PipelineSpec) -> grain.IterDataset:
  """This process's part of every global batch: dict of int32 [global_batch/P, seq_len]."""
  meta = shards.load_meta(spec.data_dir)
  paths = shards.shard_paths(spec.data_dir, spec.split)   # checked once, not once per stream
  streams = [_stream(spec, meta, paths, s) for s in spec.local_streams]
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
  iters = [iter(_stream(spec, meta, paths, s)) for s in spec.local_streams]
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
  row = {k: np.zeros(spec.seq_len, np.int32) for k in ("inputs", "targets", "segment_ids", "positions")}
  for fn in spec.row_features:
    row = fn(row)
  return row
