"""A_f's inputs packed into rows (fgram/packing.py): every f-gram is recoverable from the layout,
rows are full but for at most one slot, the chosen buckets are the brute-force optimum, a need
above every bucket grows one deterministically, and on a real corpus A_f executes within 1.25x of
the token slots it needs."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from scone_jax.fgram import packing
from scone_jax.methods.scone import DistinctFgrams, PackedFgrams
from tests.helpers import fgram_batch


def _random_fgrams(rng, n, k):
  lengths = rng.integers(2, k + 1, n)
  tokens = np.full((n, k), -1, np.int32)
  for i, m in enumerate(lengths):
    tokens[i, :m] = rng.integers(4, 1000, m)
  return tokens, lengths


@pytest.mark.parametrize("seed, n, k, row_len", [(0, 1, 2, 8), (1, 37, 3, 16), (2, 500, 4, 16), (3, 300, 5, 24),
                                                 (4, 64, 8, 32), (5, 200, 4, 9)])
def test_every_fgram_is_recovered_from_the_packed_rows(seed, n, k, row_len):
  rng = np.random.default_rng(seed)
  tokens, lengths = _random_fgrams(rng, n, k)
  rows = packing.rows_needed(lengths, row_len)
  arrays, index = packing.pack(tokens, lengths, rows + 2, row_len)   # two spare rows stay empty
  per_row = row_len // 2
  assert sorted(index.tolist()) == sorted(set(index.tolist())) and index.min() >= 0
  for i in range(n):
    r, j = divmod(int(index[i]), per_row)
    end, m = int(arrays["ends"][r, j]), int(lengths[i])
    np.testing.assert_array_equal(arrays["tokens"][r, end - m + 1:end + 1], tokens[i, :m])
    np.testing.assert_array_equal(arrays["positions"][r, end - m + 1:end + 1], np.arange(m))
    assert set(arrays["segments"][r, end - m + 1:end + 1].tolist()) == {j + 1}
  used = arrays["segments"] > 0
  assert used.sum() == lengths.sum()   # no slot holds two f-grams, none is lost
  assert not used[rows:].any()
  # Each segment is one contiguous run: slots of one f-gram are never interleaved with another's.
  for r in range(rows):
    seg = arrays["segments"][r][used[r]]
    assert (np.diff(seg) >= 0).all()
  with pytest.raises(ValueError):
    packing.pack(tokens, lengths, rows - 1, row_len) if rows > 1 else packing.pack(tokens, lengths, 0, row_len)


def test_rows_are_full_but_for_one_slot_when_two_grams_fill_the_gaps():
  rng = np.random.default_rng(7)
  lengths = np.concatenate([np.full(400, 2), rng.integers(3, 6, 300)])
  row_len = 24
  rows = packing.rows_needed(lengths, row_len)
  # Every row but the last is full or one slot short (an odd gap no 2-gram fits).
  assert rows * row_len - lengths.sum() <= rows + row_len


def test_buckets_are_the_brute_force_optimum():
  rng = np.random.default_rng(3)
  for _ in range(30):
    needs = rng.integers(1, 60, rng.integers(1, 12)).tolist()
    b, g = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    got = packing.choose_buckets(needs, b, g)
    values = sorted({packing.round_up(x, g) for x in needs})

    def cost(sizes, needs=needs, g=g):
      return sum(min(s for s in sizes if s >= packing.round_up(x, g)) for x in needs)

    best = min(cost(c + (values[-1],)) for m in range(min(b, len(values)))
               for c in itertools.combinations(values[:-1], m))
    assert cost(got) == best and max(got) == values[-1] and len(got) <= b, (needs, b, g, got)
    assert all(s % g == 0 for s in got)


def test_a_need_above_every_bucket_grows_one_the_same_way_every_time():
  buckets = packing.Buckets([8, 16], granularity=4)
  assert buckets.fit(3) == 8 and buckets.fit(16) == 16
  grown = buckets.fit(23)
  assert grown >= 23 and grown % 4 == 0
  assert packing.Buckets([8, 16], granularity=4).fit(23) == grown   # no history in it
  assert buckets.fit(17) == 20 and buckets.fit(1000) >= 1000


def test_on_a_real_corpus_af_executes_within_1_25x_of_the_needed_slots(tiny_corpus, tiny_fgrams):
  """The suite's tiny corpus and f-grams, batches of 8 x 32 from the real pipeline: the buckets
  come from the first 16 batches, the next 40 are measured (some need more than the sample's
  largest bucket: they run, larger)."""
  from scone_jax import experiment
  from scone_jax.data import pipeline
  exp = experiment.load(["models/tiny.gin", "methods/scone.gin", "runs/cpu.gin"],
                        [f"DATA_DIR = '{tiny_corpus}'", f"FGRAM_DIR = '{tiny_fgrams}'", "DataConfig.seq_len = 32",
                         "DataConfig.batch_size = 8", "FgramConfig.sample_batches = 16"])
  spec = exp.pipeline_spec("train", prefetch=0)
  feature = spec.batch_features[0]
  batches = list(itertools.islice(iter(pipeline.make_dataset(spec)), 56))[16:]
  work = np.sum([b["stat_train_only_work"] for b in batches], axis=0)
  assert work[1] <= 1.25 * work[0], (feature.buckets.sizes, work)
  # The packed rows hold exactly the batch's distinct f-grams (recomputed here with the matcher
  # over each row's own tokens: a superset of the batch's f-grams minus those cut by a row start).
  for b in batches[:5]:
    matched = (b["match_len"] >= 2) & (b["segment_ids"] > 0)
    tuples = set()
    for r, i in zip(*np.nonzero(matched)):
      n = int(b["match_len"][r, i])
      window = np.concatenate([b["history"][r, i], [b["inputs"][r, i]]])[-n:]
      tuples.add(tuple(window.tolist()))
    assert b["stat_train_only_work"][0] == sum(len(t) for t in tuples)
    assert (b["unique_packed_segments"] > 0).sum() == b["stat_train_only_work"][0]
    assert b["unique_packed_tokens"].shape[0] in feature.buckets.sizes or b["unique_packed_tokens"].shape[0] > max(feature.buckets.sizes)


def test_a_batch_beyond_the_buckets_runs_in_a_larger_one():
  rng = np.random.default_rng(0)
  grams = sorted({tuple(rng.integers(4, 50, n).tolist()) for n in rng.integers(2, 4, 300)})

  def batch(fgram_id):
    base = {"inputs": np.zeros(fgram_id.shape, np.int32), "segment_ids": np.ones(fgram_id.shape, np.int32)}
    return fgram_batch(base, grams, fgram_id, 3)

  small = batch(np.where(rng.random((2, 16)) < 0.5, rng.integers(0, 10, (2, 16)), -1).astype(np.int32))
  big_ids = rng.permutation(len(grams))[:256].astype(np.int32).reshape(8, 32)
  feature = DistinctFgrams(PackedFgrams(3), sample=lambda: [small])
  out = feature(batch(big_ids))
  assert out["unique_packed_tokens"].shape[0] > max(feature.buckets.sizes)
  assert out["stat_train_only_work"][0] == sum(len(grams[i]) for i in big_ids.reshape(-1))
  # fgram_index points at each position's own f-gram in the packed list
  per_row = out["unique_packed_ends"].shape[1]
  for pos in range(0, 256, 17):
    r, j = divmod(int(out["fgram_index"].reshape(-1)[pos]), per_row)
    g = grams[int(big_ids.reshape(-1)[pos])]
    end = int(out["unique_packed_ends"][r, j])
    assert tuple(out["unique_packed_tokens"][r, end - len(g) + 1:end + 1].tolist()) == g
