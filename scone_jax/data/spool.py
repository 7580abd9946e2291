"""Round-robin shard writing in bounded memory: documents are spooled to plain files, and each
shard becomes its ArrayRecord file after the last document, one shard at a time.

Why: an open ArrayRecordWriter holds about 18 MB of buffers (measured with array_record 0.8.6,
independent of compression and of `max_parallelism`), and round-robin writing keeps every shard of
a split open at once, so shards.ShardWriter costs ~18 MB x shards (8 shards: ~150 MB; a 100 GB
corpus, 3,200 shards: ~57 GB). SpooledShardWriter has the interface of shards.ShardWriter and
writes the same records in the same order with the same options, so the shard files are
byte-identical; the cost is writing and reading each token once more (int32, on local disk).
"""
from __future__ import annotations

import os
import shutil
import struct

import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter

from scone_jax.data import shards

_LENGTH = struct.Struct("<Q")   # bytes of the record that follows
SPOOL_BUFFER = 1 << 20   # per spool file


class SpooledShardWriter:
  """Writes documents round-robin into `count` ArrayRecord shards of one split (as
  shards.ShardWriter), through spool files in `spool_dir` (removed by close())."""

  def __init__(self, data_dir: str, split: str, count: int, spool_dir: str):
    self.paths = [os.path.join(data_dir, shards.shard_name(split, i, count)) for i in range(count)]
    self._spool_dir = os.path.join(spool_dir, split)
    os.makedirs(self._spool_dir, exist_ok=True)
    self._spools = [open(os.path.join(self._spool_dir, f"{i}.spool"), "wb", buffering=SPOOL_BUFFER)
                    for i in range(count)]
    self._next = 0
    self.num_documents = 0
    self.num_tokens = 0
    self.max_ids = [-1] * count   # the largest token id in each shard (meta.json `shard_max_id`)
    self._closed = False

  def write(self, ids) -> None:
    ids = np.asarray(ids)
    record = shards.encode_document(ids)
    spool = self._spools[self._next]
    spool.write(_LENGTH.pack(len(record)))
    spool.write(record)
    if ids.size:
      self.max_ids[self._next] = max(self.max_ids[self._next], int(ids.max()))
    self._next = (self._next + 1) % len(self._spools)
    self.num_documents += 1
    self.num_tokens += len(ids)

  def shard_max_ids(self) -> dict[str, int]:
    return {os.path.basename(p): m for p, m in zip(self.paths, self.max_ids)}

  def abort(self) -> None:
    """Drops the spool files without writing shards (prepare failed; its directory goes too)."""
    self._closed = True
    for spool in self._spools:
      spool.close()
    shutil.rmtree(self._spool_dir, ignore_errors=True)

  def close(self) -> None:
    """Turns every spool file into its shard (one ArrayRecordWriter open at a time)."""
    if self._closed:
      return
    self._closed = True
    try:
      for spool in self._spools:
        spool.close()
      for index, path in enumerate(self.paths):
        spool_path = os.path.join(self._spool_dir, f"{index}.spool")
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
      for spool in self._spools:
        spool.close()
      shutil.rmtree(self._spool_dir, ignore_errors=True)
