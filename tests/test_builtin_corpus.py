"""Counting and matching on (a prefix of) the embedded corpus against the brute-force definitions."""
from __future__ import annotations

import numpy as np

from scone_jax.data import shards
from scone_jax.data.prepare import prepare
from scone_jax.fgram.build import build
from scone_jax.fgram.matcher import ExactMatcher
from tests.reference import brute_force_fgrams, brute_force_match


def test_fgrams_and_matches_of_the_builtin_corpus_equal_brute_force(tmp_path):
  data = str(tmp_path / "data")
  prepare("builtin:python-stdlib", data, vocab_size=400, max_docs=40, register=False)
  meta = shards.load_meta(data)
  train = list(shards.read_documents(data, "train"))
  assert len(train) >= 30 and sum(len(d) for d in train) > 50_000
  vocab = build(data, str(tmp_path / "fg"), max_n=4, size=3000, min_count=3)
  expected = brute_force_fgrams(train, set(meta.special_ids), 4, 3000, 3)
  assert list(zip(vocab.as_tuples(), vocab.counts.tolist())) == expected
  matcher = ExactMatcher(vocab)
  grams = vocab.as_tuples()
  for doc in list(shards.read_documents(data, "validation"))[:3]:
    doc = doc[:800][None]
    got = matcher.match(doc)
    want = brute_force_match(grams, 4, doc)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
