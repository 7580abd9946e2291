"""Content hashes of the files we write and verify (shards, f-gram parquet, checkpoints, models)."""
from __future__ import annotations

import hashlib


def file_sha256(path: str) -> str:
  """sha256 hex digest of a file, read in 1 MiB blocks."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()
