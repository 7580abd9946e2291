"""Round-robin shard writing in bounded memory: documents are spooled to plain files, and each
shard becomes its ArrayRecord file after the last document, one shard at a time.

Why: an open ArrayRecordWriter holds about 18 MB of buffers (measured with array_record 0.8.6,
independent of compression and of `max_parallelism`), and round-robin writing keeps every shard of
a split open at once, so shards.ShardWriter costs ~18 MB x shards (8 shards: ~150 MB; a 100 GB
corpus, 3,200 shards: ~57 GB). SpooledShardWriter has the interface of shards.ShardWriter and
writes the same records in the same order with the same options, so the shard files are
byte-identical; the cost is writing and reading each token once more (int32, on local disk).
No spool file stays open: records wait in per-shard buffers, at most SPOOL_BUDGET bytes in all,
and a full budget is appended to the spool files one file at a time. So the memory and the file
descriptors do not grow with the number of shards (an open buffered file per shard cost 1 MB and
one descriptor each: 3,200 shards would not open under `ulimit -n 1024`).
"""
from __future__ import annotations

import os
import shutil
import struct

import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter

from scone_jax.data import shards

_LENGTH = struct.Struct("<Q")   # bytes of the record that follows
SPOOL_BUFFER = 1 << 20   # read buffer of a spool file when its shard is written
SPOOL_BUDGET = 32 << 20  # records buffered in memory across all shards before they go to their spool files


class SpooledShardWriter:
  """Writes documents round-robin into `count` ArrayRecord shards of one split (as
  shards.ShardWriter), through spool files in `spool_dir` (removed by close())."""

  def __init__(self, data_dir: str, split: str, count: int, spool_dir: str):
    self.paths = [os.path.join(data_dir, shards.shard_name(split, i, count)) for i in range(count)]
    self._spool_dir = os.path.join(spool_dir, split)
    os.makedirs(self._spool_dir, exist_ok=True)
    self._pending: list[list[bytes]] = [[] for _ in range(count)]   # records not yet in their spool file
    self._pending_bytes = 0
    for i in range(count):   # every spool file exists (empty) from the start
      open(self._spool_path(i), "wb").close()
    self._next = 0
    self.num_documents = 0
    self.num_tokens = 0
    self.max_ids = [-1] * count   # the largest token id in each shard (meta.json `shard_max_id`)
    self._closed = False

  def _spool_path(self, index: int) -> str:
    return os.path.join(self._spool_dir, f"{index}.spool")

  def _flush(self) -> None:
    """Appends every shard's buffered records to its spool file, one file open at a time."""
    for index, pending in enumerate(self._pending):
      if pending:
        with open(self._spool_path(index), "ab") as f:
          f.write(b"".join(pending))
        pending.clear()
    self._pending_bytes = 0

  def write(self, ids) -> None:
    ids = np.asarray(ids)
    record = shards.encode_document(ids)
    self._pending[self._next] += (_LENGTH.pack(len(record)), record)
    self._pending_bytes += _LENGTH.size + len(record)
    if ids.size:
      self.max_ids[self._next] = max(self.max_ids[self._next], int(ids.max()))
    self._next = (self._next + 1) % len(self.paths)
    self.num_documents += 1
    self.num_tokens += len(ids)
    if self._pending_bytes >= SPOOL_BUDGET:
      self._flush()

  def shard_max_ids(self) -> dict[str, int]:
    return {os.path.basename(p): m for p, m in zip(self.paths, self.max_ids)}

  def abort(self) -> None:
    """Drops the spool files without writing shards (prepare failed; its directory goes too)."""
    self._closed = True
    self._pending = [[] for _ in self.paths]
    shutil.rmtree(self._spool_dir, ignore_errors=True)

  def close(self) -> None:
    """Turns every spool file into its shard (one ArrayRecordWriter open at a time)."""
    if self._closed:
      return
    self._closed = True
    try:
      self._flush()
      for index, path in enumerate(self.paths):
        spool_path = self._spool_path(index)
        writer = ArrayRecordWriter(path, shards.WRITER_OPTIONS)
        try:
          with open(spool_path, "rb", buffering=SPOOL_BUFFER) as f:
            while header := f.read(_LENGTH.size):
              (length,) = _LENGTH.unpack(header)
              writer.write(f.read(length))
        finally:
          writer.close()
        os.remove(spool_path)
    finally:
      shutil.rmtree(self._spool_dir, ignore_errors=True)
