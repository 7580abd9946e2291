"""The grain pipeline: packing keeps documents apart (checked against unpacked references),
every document is read once per epoch, and global batches do not depend on the process count."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from scone_jax.config import ModelConfig
from scone_jax.data import pipeline
from scone_jax.models import build_model
from tests.helpers import make_data


def _batches(spec, n):
  it = iter(pipeline.make_dataset(spec))
  out = [next(it) for _ in range(n)]
  if hasattr(it, "close"):
    it.close()
  return out


def test_rows_reassemble_into_every_document_once(tmp_path):
  data, docs = make_data(str(tmp_path / "d"), docs=40, max_len=50)
  spec = pipeline.PipelineSpec(data, "validation", 16, 4, shuffle=False, prefetch=0)
  pieces: dict[tuple[int, int], list[int]] = {}
  for b in pipeline.eval_batches(spec):
    for r in range(b["inputs"].shape[0]):
      # Each row of stream r holds consecutive pieces of the stream's documents.
      stream = pieces.setdefault(r, [])
      seg = b["segment_ids"][r]
      stream.extend(zip(seg.tolist(), b["inputs"][r].tolist(), b["targets"][r].tolist(), b["positions"][r].tolist()))
  # Rebuild documents: targets of each stream concatenated, split at EOS (=1).
  rebuilt = []
  for items in pieces.values():
    cur = []
    for seg, _, tgt, _ in items:
      if seg == 0:
        continue
      if tgt == 1:
        rebuilt.append(tuple(cur))
        cur = []
      else:
        cur.append(tgt)
  expected = sorted(tuple(int(t) for t in d) for d in docs["validation"])
  assert sorted(rebuilt) == expected
  # inputs are targets shifted right by one within a document, starting with BOS (=2).
  for items in pieces.values():
    for n, ((s0, _i0, t0, p0), (s1, i1, _t1, p1)) in enumerate(zip(items, items[1:])):
      if s1 == s0 and s1 > 0 and (n + 1) % 16:   # same segment of the same row
        assert i1 == t0 and p1 == p0 + 1


def test_epoch_reads_every_document_once(tmp_path):
  data, docs = make_data(str(tmp_path / "d"), docs=24, max_len=8)
  rows, streams = 8, 4
  batches = _batches(pipeline.PipelineSpec(data, "train", rows, streams, seed=3, prefetch=0), 40)
  epoch = []
  for r in range(streams):
    # The stream's document sequence: its targets concatenated over steps, split at EOS (=1).
    targets = np.concatenate([b["targets"][r][b["segment_ids"][r] > 0] for b in batches]).tolist()
    seq, cur = [], []
    for t in targets:
      if t == 1:
        seq.append(tuple(cur))
        cur = []
      else:
        cur.append(t)
    epoch += seq[:24 // streams]   # stream r reads documents r, r+4, ... of the shuffled epoch
  assert sorted(epoch) == sorted(tuple(int(t) for t in d) for d in docs["train"])
  # ... in an order that is not the file order.
  assert epoch != [tuple(int(t) for t in d) for d in docs["train"]]


def test_global_batch_is_independent_of_process_count(tmp_path):
  data, _ = make_data(str(tmp_path / "d"), docs=60)
  one = _batches(pipeline.PipelineSpec(data, "train", 32, 8, seed=1, prefetch=0), 5)
  for procs in (2, 4):
    parts = [_batches(pipeline.PipelineSpec(data, "train", 32, 8, seed=1, process_index=p, process_count=procs,
                                            prefetch=0), 5) for p in range(procs)]
    for step in range(5):
      for key in one[step]:
        np.testing.assert_array_equal(np.concatenate([parts[p][step][key] for p in range(procs)]), one[step][key])


def test_packed_attention_and_loss_never_cross_documents(tmp_path):
  data, _ = make_data(str(tmp_path / "d"), docs=30, max_len=12)
  spec = pipeline.PipelineSpec(data, "train", 24, 2, seed=0, prefetch=0)
  batch = _batches(spec, 1)[0]
  assert batch["segment_ids"].max() >= 2   # really packed
  cfg = ModelConfig(vocab_size=64, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, d_ff=64)
  model = build_model(cfg, 0)
  logits = np.asarray(model({k: jnp.asarray(v) for k, v in batch.items()}))
  for r in range(batch["inputs"].shape[0]):
    for seg in np.unique(batch["segment_ids"][r]):
      if seg == 0:
        continue
      cols = np.nonzero(batch["segment_ids"][r] == seg)[0]
      alone = {"inputs": batch["inputs"][r, cols][None], "positions": batch["positions"][r, cols][None],
               "segment_ids": np.ones((1, len(cols)), np.int32)}
      ref = np.asarray(model({k: jnp.asarray(v) for k, v in alone.items()}))[0]
      np.testing.assert_allclose(logits[r, cols], ref, rtol=2e-5, atol=2e-5)
