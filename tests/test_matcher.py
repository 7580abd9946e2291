"""The exact matcher against a brute-force reference (docs/METHODS.md 1.2), and `fgrams match`."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from scone_jax import cli
from scone_jax.data import shards
from scone_jax.fgram import vocab as vocab_lib
from scone_jax.fgram.matcher import ExactMatcher, dedup_batch
from tests.reference import brute_force_match, top_fgrams

PROPERTY = settings(max_examples=60, deadline=None, derandomize=True)


def as_arrays(fgrams: list[tuple[int, ...]]) -> tuple[np.ndarray, np.ndarray]:
  offsets = np.zeros(len(fgrams) + 1, np.int64)
  np.cumsum([len(g) for g in fgrams], out=offsets[1:])
  return np.array([t for g in fgrams for t in g], np.int32), offsets


def three_slots(keys: np.ndarray) -> np.ndarray:
  """A planted-collision hash: every key lands in one of three home slots."""
  return (keys % np.uint64(3)) << np.uint64(62)


HASHES = {"default": None, "constant": np.zeros_like, "three_slots": three_slots}


@st.composite
def cases(draw, max_rows=3):
  alphabet = draw(st.integers(2, 6))
  max_n = draw(st.integers(2, 5))
  corpus = draw(st.lists(st.integers(0, alphabet - 1), min_size=2, max_size=120))
  fgrams = top_fgrams(corpus, max_n, draw(st.integers(0, 80)))
  rows, length = draw(st.integers(1, max_rows)), draw(st.integers(1, 30))
  # Mostly corpus-like tokens, some no f-gram holds (-1 and beyond the alphabet).
  tokens = np.array(draw(st.lists(st.integers(-1, alphabet), min_size=rows * length, max_size=rows * length)),
                    np.int32).reshape(rows, length)
  segment_ids = np.array(draw(st.lists(st.integers(0, 3), min_size=rows * length, max_size=rows * length)),
                         np.int32).reshape(rows, length)
  segment_ids = np.where(segment_ids > 0, np.maximum.accumulate(segment_ids, axis=1), 0)  # packed runs, padding
  return fgrams, max_n, tokens, segment_ids


# ---- match -------------------------------------------------------------------------------------

@PROPERTY
@given(case=cases(), hash_name=st.sampled_from(sorted(HASHES)), chunk=st.sampled_from([1, 2, 3, 7, 1 << 16]))
def test_match_equals_brute_force(case, hash_name, chunk):
  fgrams, max_n, tokens, segment_ids = case
  matcher = ExactMatcher.from_arrays(*as_arrays(fgrams), max_n, hash_fn=HASHES[hash_name])
  matcher._chunk = chunk  # positions per vectorised pass: small ones put chunk borders everywhere
  want = brute_force_match(fgrams, max_n, tokens, segment_ids)
  got = matcher.match(tokens, segment_ids)
  np.testing.assert_array_equal(got[0], want[0])
  np.testing.assert_array_equal(got[1], want[1])
  # Without segment ids each row is one segment.
  got_rows = matcher.match(tokens)
  np.testing.assert_array_equal(got_rows[0], brute_force_match(fgrams, max_n, tokens)[0])


@PROPERTY
@given(case=cases())
def test_large_token_ids_use_the_wide_layout_and_stay_exact(case):
  fgrams, max_n, tokens, segment_ids = case
  # Ids near 2**31 leave no room to pack key and id into one word.
  big = lambda t: 2**31 - 1 - 7919 * t if t >= 0 else t
  fgrams = [tuple(big(t) for t in g) for g in fgrams]
  tokens = np.vectorize(big)(tokens).astype(np.int64)
  matcher = ExactMatcher.from_arrays(*as_arrays(fgrams), max_n, hash_fn=three_slots)
  if len(fgrams) >= 3:  # then (base + 1) * R << id_bits >= 2**63
    assert matcher._entry_ids is not None  # the layout under test
  want = brute_force_match(fgrams, max_n, tokens, segment_ids)
  got = matcher.match(tokens, segment_ids)
  np.testing.assert_array_equal(got[0], want[0])
  np.testing.assert_array_equal(got[1], want[1])


def test_every_key_colliding_is_still_exact():
  rng = np.random.default_rng(0)
  corpus = rng.integers(0, 4, 400).tolist()
  fgrams = top_fgrams(corpus, 4, 200)
  matcher = ExactMatcher.from_arrays(*as_arrays(fgrams), 4, hash_fn=np.zeros_like)
  assert matcher.max_probe == len(fgrams) - 1  # one probe run through the whole table
  tokens = rng.integers(0, 5, (4, 64)).astype(np.int32)
  want = brute_force_match(fgrams, 4, tokens)
  got = matcher.match(tokens)
  np.testing.assert_array_equal(got[0], want[0])
  np.testing.assert_array_equal(got[1], want[1])
  assert (got[0] >= 0).mean() > 0.5  # the test exercises hits, not just misses


def test_leading_dims_and_a_large_batch_across_chunks():
  rng = np.random.default_rng(1)
  corpus = rng.integers(0, 5, 2000).tolist()
  fgrams = top_fgrams(corpus, 3, 60)
  matcher = ExactMatcher.from_arrays(*as_arrays(fgrams), 3)
  tokens = rng.integers(0, 5, (2, 3, 70_000)).astype(np.int32)  # rows longer than a chunk
  fgram_id, match_len = matcher.match(tokens)
  assert fgram_id.shape == match_len.shape == tokens.shape and fgram_id.dtype == np.int32
  flat = tokens.reshape(6, -1)
  want = brute_force_match(fgrams, 3, flat[:, 65_500:66_000])  # across the chunk border, mid row
  got = matcher.match(flat[:, 65_500:66_000])
  np.testing.assert_array_equal(got[0], want[0])
  np.testing.assert_array_equal(fgram_id.reshape(6, -1)[:, 65_503:66_000], want[0][:, 3:])
  np.testing.assert_array_equal(fgram_id[:, :, 0], -1)  # a row's first token never matches


def test_empty_vocabulary_and_empty_input():
  matcher = ExactMatcher.from_arrays(np.zeros(0, np.int32), np.zeros(1, np.int64), 3)
  fgram_id, match_len = matcher.match(np.arange(10, dtype=np.int32).reshape(2, 5))
  assert (fgram_id == -1).all() and (match_len == 1).all()
  fgram_id, match_len = matcher.match(np.zeros((2, 0), np.int32))
  assert fgram_id.shape == (2, 0)


def test_refuses_a_vocabulary_it_cannot_match_exactly():
  flat, offsets = as_arrays([(1, 2), (5, 1, 2), (7, 3, 1)])  # (3, 1) is missing
  with pytest.raises(ValueError, match="not closed under suffixes"):
    ExactMatcher.from_arrays(flat, offsets, 3)
  with pytest.raises(ValueError, match="twice"):
    ExactMatcher.from_arrays(*as_arrays([(1, 2), (1, 2)]), 3)
  with pytest.raises(ValueError, match="lengths"):
    ExactMatcher.from_arrays(*as_arrays([(1, 2, 3, 4)]), 3)
  # Closure under suffixes is all matching needs; prefixes may be missing.
  ExactMatcher.from_arrays(*as_arrays([(1, 2), (0, 1, 2), (5, 0, 1, 2)]), 4)


# ---- match_last --------------------------------------------------------------------------------

@PROPERTY
@given(case=cases(max_rows=6), data=st.data())
def test_match_last_equals_match_on_the_last_position(case, data):
  fgrams, max_n, tokens, _ = case
  matcher = ExactMatcher.from_arrays(*as_arrays(fgrams), max_n)
  rows, length = tokens.shape
  # Left padding with -1: a shorter sequence, or a document start inside the history.
  pad = np.array(data.draw(st.lists(st.integers(0, length), min_size=rows, max_size=rows)))
  history = np.where(np.arange(length)[None, :] < pad[:, None], -1, tokens)
  fgram_id, match_len = matcher.match_last(history)
  want = brute_force_match(fgrams, max_n, history, np.where(history == -1, 0, 1))
  np.testing.assert_array_equal(fgram_id, want[0][:, -1])
  np.testing.assert_array_equal(match_len, want[1][:, -1])
  np.testing.assert_array_equal(fgram_id, matcher.match(history)[0][:, -1])


def test_match_last_uses_only_the_last_k_tokens():
  fgrams = [(1, 2), (2, 3), (1, 2, 3)]
  matcher = ExactMatcher.from_arrays(*as_arrays(fgrams), 3)
  fgram_id, match_len = matcher.match_last(np.array([[9, 9, 1, 2, 3], [1, 2, -1, 2, 3], [-1, -1, -1, -1, 3]]))
  assert fgram_id.tolist() == [2, 1, -1] and match_len.tolist() == [3, 2, 1]


# ---- dedup_batch -------------------------------------------------------------------------------

@PROPERTY
@given(ids=st.lists(st.integers(-1, 20), min_size=1, max_size=60), rows=st.integers(1, 3))
def test_dedup_batch_round_trips(ids, rows):
  fgram_ids = np.array(ids * rows, np.int32).reshape(rows, -1)
  distinct = len({i for i in ids if i >= 0})
  unique_ids, index, num_unique = dedup_batch(fgram_ids, max_unique=distinct + 2)
  assert num_unique == distinct and unique_ids.shape == (distinct + 2,)
  assert sorted(unique_ids[:num_unique].tolist()) == sorted({i for i in ids if i >= 0})
  assert (unique_ids[num_unique:] == -1).all()
  matched = fgram_ids >= 0
  np.testing.assert_array_equal(unique_ids[index[matched]], fgram_ids[matched])
  assert (index[~matched] == -1).all() and index.dtype == np.int32
  if distinct:
    with pytest.raises(ValueError, match="max_unique"):
      dedup_batch(fgram_ids, max_unique=distinct - 1)


# ---- `scone-jax fgrams match` ------------------------------------------------------------------

VOCAB_SIZE = 12


def make_data(path: str, documents: list[list[int]], source: str = "test") -> None:
  os.makedirs(path)
  writer = shards.ShardWriter(path, "validation", 2)
  for doc in documents:
    writer.write(doc)
  writer.close()
  shards.write_meta(path, shards.DataMeta(
      vocab_size=VOCAB_SIZE, pad_id=0, eos_id=1, bos_id=-1, unk_id=2, tokenizer_sha256="0" * 64,
      num_documents={"validation": len(documents)}, num_tokens={"validation": sum(map(len, documents))},
      num_shards={"validation": 2}, source=source))


def make_fgrams(path: str, fgrams, fingerprint: str, vocab_size: int = VOCAB_SIZE, max_n: int = 3) -> None:
  meta = vocab_lib.FgramMeta(max_n=max_n, size=len(fgrams), min_count=1, tokens_counted=0,
                             data_fingerprint=fingerprint, num_fgrams=len(fgrams), vocab_size=vocab_size)
  vocab_lib.save(vocab_lib.FgramVocab.from_tuples(fgrams, [1] * len(fgrams), meta), path)


@pytest.fixture
def data_and_fgrams(tmp_path):
  rng = np.random.default_rng(2)
  documents = [rng.integers(3, 7, int(n)).tolist() for n in rng.integers(0, 40, 9)]
  data = str(tmp_path / "data")
  make_data(data, documents)
  fgrams = top_fgrams([t for d in documents for t in d], 3, 25)
  fg = str(tmp_path / "fg")
  make_fgrams(fg, fgrams, shards.data_fingerprint(data))
  return data, fg, fgrams


def test_cli_match_jsonl_end_to_end(data_and_fgrams, capsys):
  data, fg, fgrams = data_and_fgrams
  assert cli.main(["fgrams", "match", fg, "--data", data, "--split", "validation", "--format", "jsonl"]) == 0
  lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  documents = list(shards.read_documents(data, "validation"))
  assert [line["doc"] for line in lines] == list(range(len(documents)))
  for line, doc in zip(lines, documents):
    want_id, want_len = brute_force_match(fgrams, 3, np.array([doc], np.int32).reshape(1, -1))
    assert line["fgram_id"] == want_id[0].tolist() and line["length"] == want_len[0].tolist()
    if len(doc):
      assert line["fgram_id"][0] == -1
  assert any(i >= 0 for line in lines for i in line["fgram_id"])
  assert ExactMatcher(vocab_lib.load(fg)).max_n == 3


def test_cli_match_max_docs_and_text(data_and_fgrams, capsys):
  data, fg, _ = data_and_fgrams
  assert cli.main(["fgrams", "match", fg, "--data", data, "--max_docs", "3"]) == 0
  assert len(capsys.readouterr().out.splitlines()) == 3
  assert cli.main(["fgrams", "match", fg, "--data", data, "--max_docs", "2", "--format", "text"]) == 0
  text = capsys.readouterr().out
  assert text.startswith("doc 0:") and "doc 1:" in text and "doc 2:" not in text


def test_cli_refuses_fgrams_from_other_data(data_and_fgrams, tmp_path, capsys):
  data, _, fgrams = data_and_fgrams
  other = str(tmp_path / "other_fg")
  make_fgrams(other, fgrams, "f" * 64)
  assert cli.main(["fgrams", "match", other, "--data", data]) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and "ffffffff" in err and shards.data_fingerprint(data)[:16] in err
  assert "--allow_other_data" in err
  assert cli.main(["fgrams", "match", other, "--data", data, "--allow_other_data", "--max_docs", "1"]) == 0


def test_cli_one_line_errors(data_and_fgrams, tmp_path, capsys):
  data, fg, fgrams = data_and_fgrams
  wrong_size = str(tmp_path / "wrong_size")
  make_fgrams(wrong_size, fgrams, shards.data_fingerprint(data), vocab_size=VOCAB_SIZE + 1)
  for argv in (["fgrams", "match", wrong_size, "--data", data],
               ["fgrams", "match", fg, "--data", str(tmp_path / "missing")],
               ["fgrams", "match", str(tmp_path / "no_fg"), "--data", data]):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "error:" in err
