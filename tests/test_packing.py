"""A_f's inputs packed into rows as prefix trees (fgram/packing.py): every f-gram is recovered from
the layout (its slot's ancestors under the tree mask are its tokens at positions 0..n-1), the
executed slots are the trie's nodes plus what row breaks cost, the chosen buckets are the
brute-force optimum, a need above every bucket grows one deterministically, and on a real corpus
A_f executes within 1.25x of the slots it needs."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from scone_jax.fgram import packing
from scone_jax.methods.scone import DistinctFgrams, PackedFgrams
from tests.helpers import fgram_batch


def _random_fgrams(rng, n, k, vocab=1000):
  grams = sorted({tuple(rng.integers(4, 4 + vocab, m).tolist()) for m in rng.integers(2, k + 1, n)},
                 key=lambda g: rng.random())   # distinct, in no particular order
  tokens = np.full((len(grams), k), -1, np.int32)
  for i, g in enumerate(grams):
    tokens[i, :len(g)] = g
  return grams, tokens, np.array([len(g) for g in grams])


@pytest.mark.parametrize("seed, n, k, row_len, vocab", [(0, 1, 2, 8, 1000), (1, 37, 3, 16, 1000), (2, 500, 4, 32, 6),
                                                        (3, 300, 5, 24, 4), (4, 64, 8, 32, 3), (5, 200, 4, 9, 2),
                                                        (6, 400, 2, 16, 30)])
def test_every_fgram_is_recovered_from_the_packed_rows(seed, n, k, row_len, vocab):
  rng = np.random.default_rng(seed)
  grams, tokens, lengths = _random_fgrams(rng, n, k, vocab)
  per_row = packing.outputs_per_row(row_len, k)
  rows = packing.rows_needed(tokens, lengths, row_len, per_row)
  arrays, index = packing.pack(tokens, lengths, rows + 2, row_len, per_row)   # two spare rows stay empty
  mask = packing.tree_mask(arrays["spans"])[:, 0]
  assert len(set(index.tolist())) == len(grams) and index.min() >= 0
  for i, g in enumerate(grams):
    r, j = divmod(int(index[i]), per_row)
    seen = np.flatnonzero(mask[r, int(arrays["ends"][r, j])])   # the slots its last token attends to
    assert tuple(arrays["tokens"][r, seen].tolist()) == g
    assert arrays["positions"][r, seen].tolist() == list(range(len(g)))
  # Every slot sees itself; free slots (the spare rows) see only themselves.
  assert mask[:, np.arange(row_len), np.arange(row_len)].all()
  assert (mask[rows:].sum(axis=2) == 1).all()
  # The needed slots are the prefix tree's nodes (every distinct prefix), counted by brute force;
  # the executed ones exceed them only by the paths a row break repeats and a row's unused end.
  nodes = {g[:m] for g in grams for m in range(1, len(g) + 1)}
  assert packing.trie_nodes(tokens, lengths) == len(nodes)
  used = mask.sum(axis=1) > 1   # a slot some other slot attends to, or an f-gram's last token
  used[np.repeat(np.arange(rows + 2), per_row), arrays["ends"].reshape(-1)] |= np.isin(
      np.arange((rows + 2) * per_row), index)
  assert len(nodes) <= used.sum() <= len(nodes) + (rows - 1) * (k - 1)
  with pytest.raises(ValueError):
    packing.pack(tokens, lengths, rows - 1, row_len, per_row)


def test_shared_prefixes_share_slots():
  """Hand-made: "5 6", "5 6 7", "5 6 8", "5 9" and "3 4" are 7 nodes (3, 3 4, 5, 5 6, 5 6 7,
  5 6 8, 5 9), not 12 tokens; "5 6" is read off at the slot of its 6, which 7 and 8 extend."""
  grams = [(5, 6), (5, 6, 7), (5, 6, 8), (5, 9), (3, 4)]
  tokens = np.full((5, 3), -1, np.int32)
  for i, g in enumerate(grams):
    tokens[i, :len(g)] = g
  lengths = np.array([2, 3, 3, 2, 2])
  assert packing.trie_nodes(tokens, lengths) == 7
  arrays, index = packing.pack(tokens, lengths, 1, 8, packing.outputs_per_row(8, 3))
  # Lexicographic order: 3 4 | 5 6 (7) (8) | 9 ; depths 0 1 0 1 2 2 1, one free slot.
  assert arrays["tokens"][0].tolist() == [3, 4, 5, 6, 7, 8, 9, 0]
  assert arrays["positions"][0].tolist() == [0, 1, 0, 1, 2, 2, 1, 0]
  assert arrays["spans"][0].tolist() == [2, 2, 7, 6, 5, 6, 7, 8]
  assert [int(arrays["ends"][0, j]) for j in index] == [3, 4, 5, 6, 1]


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
    assert b["stat_train_only_work"][0] == len({t[:m] for t in tuples for m in range(1, len(t) + 1)})
    assert b["stat_train_only_work"][2] == len(tuples)
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
  used = [grams[i] for i in big_ids.reshape(-1)]
  assert out["stat_train_only_work"][0] == len({g[:m] for g in used for m in range(1, len(g) + 1)})
  # fgram_index points at each position's own f-gram in the packed list
  per_row = out["unique_packed_ends"].shape[1]
  mask = packing.tree_mask(out["unique_packed_spans"])[:, 0]
  for pos in range(0, 256, 17):
    r, j = divmod(int(out["fgram_index"].reshape(-1)[pos]), per_row)
    g = grams[int(big_ids.reshape(-1)[pos])]
    seen = np.flatnonzero(mask[r, int(out["unique_packed_ends"][r, j])])
    assert tuple(out["unique_packed_tokens"][r, seen].tolist()) == g
