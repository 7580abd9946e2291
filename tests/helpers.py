"""Small shared test fixtures: synthetic prepared data directories and tiny experiments."""
from __future__ import annotations

import os

import numpy as np

from scone_jax.data import shards


def make_data(path: str, *, vocab: int = 64, docs: int = 120, val_docs: int = 12, min_len: int = 3,
              max_len: int = 60, seed: int = 0) -> tuple[str, dict[str, list[np.ndarray]]]:
  """A prepared DATA dir of learnable synthetic documents (arithmetic runs over the vocabulary).
  Returns (path, {split: documents in write order})."""
  os.makedirs(path, exist_ok=True)
  rng = np.random.default_rng(seed)
  written, counts = {}, {}
  for split, n in (("train", docs), ("validation", val_docs)):
    w = shards.ShardWriter(path, split, 2)
    written[split] = []
    for _ in range(n):
      length = int(rng.integers(min_len, max_len))
      doc = ((rng.integers(0, vocab) + rng.integers(1, 4) * np.arange(length)) % (vocab - 4) + 4).astype(np.int32)
      w.write(doc)
      written[split].append(doc)
    w.close()
    counts[split] = (w.num_documents, w.num_tokens)
  import glob
  import hashlib
  sha = {os.path.basename(p): hashlib.sha256(open(p, "rb").read()).hexdigest()
         for p in glob.glob(os.path.join(path, "*.array_record"))}
  shards.write_meta(path, shards.DataMeta(
      vocab_size=vocab, pad_id=0, eos_id=1, bos_id=2, unk_id=3, tokenizer_sha256="synthetic",
      num_documents={k: v[0] for k, v in counts.items()}, num_tokens={k: v[1] for k, v in counts.items()},
      num_shards={"train": 2, "validation": 2}, source="synthetic", extra={"shard_sha256": sha}))
  return path, written


def tiny_bindings(data_dir: str, steps: int, **extra) -> list[str]:
  b = [f"DATA_DIR = '{data_dir}'", f"TRAIN_STEPS = {steps}", "TrainConfig.log_every = 1",
       "TrainConfig.eval_batches = 2", "DataConfig.seq_len = 32", "DataConfig.batch_size = 8",
       "ModelConfig.d_model = 32", "ModelConfig.d_ff = 64"]
  b += [f"{k} = {v}" for k, v in extra.items()]
  return b


def read_metrics(workdir: str, split: str = "train") -> dict[int, dict]:
  import json
  out = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      r = json.loads(line)
      if r["split"] == split:
        out[r["step"]] = r
  return out
