"""f-gram counting (docs/METHODS.md 1.1): local counter, Beam pipeline and `fgrams build` vs brute force."""
from __future__ import annotations

import collections
import os

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from scone_jax import cli
from scone_jax.data.shards import DataMeta, ShardWriter, data_fingerprint, write_meta
from scone_jax.errors import UserError
from scone_jax.fgram import count as count_lib, vocab as vocab_lib
from scone_jax.fgram.count import count_fgrams, merge_runs, sort_and_count
from tests.reference import brute_force_fgrams


def as_pairs(ranked):
  return list(zip(ranked.as_tuples(), ranked.counts.tolist()))


@st.composite
def corpora(draw):
  vocab_size = draw(st.integers(2, 12))
  specials = draw(st.sets(st.integers(0, vocab_size - 1), max_size=2))
  doc = st.lists(st.integers(0, vocab_size - 1), max_size=40)
  docs = draw(st.lists(doc, max_size=12))
  return vocab_size, specials, docs


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(corpus=corpora(), max_n=st.integers(2, 5), size=st.integers(1, 40), min_count=st.integers(1, 4),
       chunk_tokens=st.integers(1, 80), merge_block=st.integers(1, 6))
def test_count_equals_brute_force(tmp_path_factory, corpus, max_n, size, min_count, chunk_tokens, merge_block):
  vocab_size, specials, docs = corpus
  ranked = count_fgrams([np.array(d, dtype=np.int32) for d in docs], vocab_size=vocab_size,
                        special_ids=specials, max_n=max_n, size=size, min_count=min_count,
                        chunk_tokens=chunk_tokens, merge_block=merge_block,
                        tmp_dir=str(tmp_path_factory.getbasetemp()))
  assert as_pairs(ranked) == brute_force_fgrams(docs, specials, max_n, size, min_count)
  assert ranked.meta.tokens_counted == sum(len(d) for d in docs)
  assert (ranked.meta.max_n, ranked.meta.size, ranked.meta.min_count) == (max_n, size, min_count)
  assert ranked.meta.vocab_size == vocab_size and ranked.meta.num_fgrams == len(ranked)


def test_forced_spilling_is_exact(tmp_path, monkeypatch):
  runs_merged = []  # per pass: how many chunk runs were merged

  def merge_runs_spy(runs, block):
    runs_merged.append(len(runs))
    return merge_runs(runs, block)

  monkeypatch.setattr(count_lib, "merge_runs", merge_runs_spy)
  rng = np.random.default_rng(0)
  docs = [rng.integers(0, 6, rng.integers(1, 60)) for _ in range(300)]
  expected = brute_force_fgrams(docs, {0}, 5, 200, 3)
  spilled = count_fgrams(docs, vocab_size=6, special_ids=(0,), max_n=5, size=200, min_count=3,
                         chunk_tokens=64, merge_block=4, tmp_dir=str(tmp_path))
  assert len(runs_merged) > 4 * 4  # > 100 chunk runs per pass, merged MERGE_FAN_IN at a time
  assert max(runs_merged) <= count_lib.MERGE_FAN_IN
  assert as_pairs(spilled) == expected
  runs_merged.clear()
  in_memory = count_fgrams(docs, vocab_size=6, special_ids=(0,), max_n=5, size=200, min_count=3, tmp_dir=str(tmp_path))
  assert set(runs_merged) == {1} and as_pairs(in_memory) == expected
  assert os.listdir(tmp_path) == []  # the spill directory is removed


def test_ties_break_by_length_then_token_ids(tmp_path):
  # (1,2), (2,3), (1,2,3), (5,4), (4,5)... : equal counts across lengths and ids.
  docs = [[1, 2, 3]] * 5 + [[5, 4]] * 5 + [[4, 5]] * 5 + [[2, 3]] * 2
  ranked = count_fgrams(docs, vocab_size=8, max_n=3, size=10, min_count=5, tmp_dir=str(tmp_path))
  assert as_pairs(ranked) == [((2, 3), 7), ((1, 2), 5), ((4, 5), 5), ((5, 4), 5), ((1, 2, 3), 5)]
  cut = count_fgrams(docs, vocab_size=8, max_n=3, size=3, min_count=5, tmp_dir=str(tmp_path))
  assert as_pairs(cut) == [((2, 3), 7), ((1, 2), 5), ((4, 5), 5)]


@pytest.mark.parametrize("vocab_size", [1 << 20, (1 << 31) - 1])
def test_large_vocabulary_keys_are_exact(tmp_path, vocab_size):
  # |V|^5 overflows 64 bits: the remapped keys (prefix id * |V| + last) must still be exact.
  rng = np.random.default_rng(1)
  phrases = [rng.integers(vocab_size - 50, vocab_size, 6) for _ in range(4)]
  docs = [np.concatenate([phrases[i % 4], rng.integers(0, vocab_size, 5), phrases[(i * 7) % 4]]) for i in range(40)]
  ranked = count_fgrams(docs, vocab_size=vocab_size, max_n=5, size=100, min_count=3, chunk_tokens=100,
                        tmp_dir=str(tmp_path))
  assert as_pairs(ranked) == brute_force_fgrams(docs, set(), 5, 100, 3)


def test_sort_and_count_and_merge_runs_against_counter():
  rng = np.random.default_rng(2)
  keys = rng.integers(0, 50, 1000).astype(np.uint64)
  for key_bits in (6, 64):  # position packed into the key, and the argsort fallback
    unique, counts, inverse = sort_and_count(keys, key_bits)
    expected = sorted(collections.Counter(keys.tolist()).items())
    assert list(zip(unique.tolist(), counts.tolist())) == expected
    assert np.array_equal(unique[inverse], keys)
  runs, total = [], collections.Counter()
  for _ in range(7):
    part = rng.integers(0, 300, rng.integers(0, 200)).astype(np.uint64)
    unique, counts, _ = sort_and_count(part, 9, want_inverse=False)
    runs.append((unique, counts))
    total.update(part.tolist())
  merged = list(merge_runs(runs, block=5))
  merged_keys = np.concatenate([k for k, _ in merged]).tolist()
  merged_counts = np.concatenate([c for _, c in merged]).tolist()
  assert list(zip(merged_keys, merged_counts)) == sorted(total.items())


# ---- `scone-jax fgrams build` end to end -------------------------------------------------------

def make_data(data_dir, docs, vocab_size=12, num_shards=3):
  os.makedirs(data_dir, exist_ok=True)
  train = ShardWriter(str(data_dir), "train", num_shards)
  for doc in docs:
    train.write(doc)
  train.close()
  validation = ShardWriter(str(data_dir), "validation", 1)
  validation.write([3, 4, 5])
  validation.close()
  write_meta(str(data_dir), DataMeta(
      vocab_size=vocab_size, pad_id=0, eos_id=1, bos_id=2, unk_id=-1, tokenizer_sha256="test",
      num_documents={"train": train.num_documents, "validation": 1},
      num_tokens={"train": train.num_tokens, "validation": 3},
      num_shards={"train": num_shards, "validation": 1}))
  return str(data_dir)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  rng = np.random.default_rng(3)
  phrase = [5, 6, 7, 8, 9]
  docs = []
  for _ in range(80):
    doc = rng.integers(0, 12, rng.integers(0, 30)).tolist()
    at = int(rng.integers(0, len(doc) + 1))
    docs.append(doc[:at] + phrase + doc[at:])
  return make_data(tmp_path_factory.mktemp("data"), docs), docs


def documents_in_file_order(docs, num_shards=3):
  """read_documents order: shard by shard, round-robin writing."""
  return [docs[i] for s in range(num_shards) for i in range(s, len(docs), num_shards)]


def run_cli(*argv):
  return cli.main([str(a) for a in argv])


def test_cli_build_writes_the_ranked_vocabulary(corpus, tmp_path, capsys):
  data_dir, docs = corpus
  out = tmp_path / "fg"
  assert run_cli("fgrams", "build", "--data", data_dir, "--max_n", 5, "--size", 60, "--min_count", 4,
                 "--chunk_tokens", 200, "--out", out) == 0
  assert "wrote 60 f-grams" in capsys.readouterr().out
  fgram_vocab = vocab_lib.load(str(out))
  expected = brute_force_fgrams(docs, {0, 1, 2}, 5, 60, 4)
  assert list(zip(fgram_vocab.as_tuples(), fgram_vocab.counts.tolist())) == expected
  assert any(len(g) == 5 for g, _ in expected)
  assert fgram_vocab.meta.max_n == 5 and fgram_vocab.meta.size == 60 and fgram_vocab.meta.min_count == 4
  assert fgram_vocab.meta.tokens_counted == sum(len(d) for d in docs)
  assert fgram_vocab.meta.data_fingerprint == data_fingerprint(data_dir)
  assert fgram_vocab.meta.vocab_size == 12 and fgram_vocab.meta.num_fgrams == 60
  assert sorted(os.listdir(tmp_path)) == ["fg"]  # no temporary or spill directories left
  # Rebuilding over an existing vocabulary replaces it.
  assert run_cli("fgrams", "build", "--data", data_dir, "--max_n", 2, "--size", 3, "--out", out) == 0
  assert len(vocab_lib.load(str(out))) == 3


def error_cases(data_dir, tmp_path):
  no_train = tmp_path / "no_train"
  no_train.mkdir()
  (no_train / "meta.json").write_text(open(os.path.join(data_dir, "meta.json")).read())
  bad_meta = tmp_path / "bad_meta"
  bad_meta.mkdir()
  (bad_meta / "meta.json").write_text("{not json")
  a_file = tmp_path / "a_file"
  a_file.write_text("x")
  busy = tmp_path / "busy"
  busy.mkdir()
  (busy / "notes.txt").write_text("mine")
  small_vocab = make_data(tmp_path / "small_vocab", [[3, 4, 11]], vocab_size=10)
  ok = ["--max_n", 3, "--size", 10]
  return {
      "missing data": ["--data", tmp_path / "nope", *ok, "--out", tmp_path / "o"],
      "no meta.json": ["--data", tmp_path, *ok, "--out", tmp_path / "o"],
      "invalid meta.json": ["--data", bad_meta, *ok, "--out", tmp_path / "o"],
      "no train shards": ["--data", no_train, *ok, "--out", tmp_path / "o"],
      "token outside vocab": ["--data", small_vocab, *ok, "--out", tmp_path / "o"],
      "K < 2": ["--data", data_dir, "--max_n", 1, "--size", 10, "--out", tmp_path / "o"],
      "S < 1": ["--data", data_dir, "--max_n", 3, "--size", 0, "--out", tmp_path / "o"],
      "c_min < 1": ["--data", data_dir, *ok, "--min_count", 0, "--out", tmp_path / "o"],
      "out under a file": ["--data", data_dir, *ok, "--out", a_file / "fg"],
      "out is a file": ["--data", data_dir, *ok, "--out", a_file],
      "out is someone's directory": ["--data", data_dir, *ok, "--out", busy],
      "nothing reaches c_min": ["--data", data_dir, *ok, "--min_count", 10**9, "--out", tmp_path / "o"],
      "pipeline flags without beam": ["--data", data_dir, *ok, "--out", tmp_path / "o", "--project=p"],
      "beam args without beam": ["--data", data_dir, *ok, "--out", tmp_path / "o", "--beam_args=--project=p"],
      "beam args unbalanced quote": ["--data", data_dir, *ok, "--runner", "beam", "--out", tmp_path / "o",
                                     "--beam_args=--project='p"],
  }


def test_every_error_exits_2_with_one_line(corpus, tmp_path, capsys):
  data_dir, _ = corpus
  for name, argv in error_cases(data_dir, tmp_path).items():
    assert run_cli("fgrams", "build", *argv) == 2, name
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("scone-jax fgrams build: error:"), (name, captured.err)
  assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
  assert not (tmp_path / "o").exists()


def test_bench_count_runs_and_agrees(capsys):
  assert run_cli("bench", "count", "--tokens", 20000, "--vocab_size", 50, "--size", 200, "--max_n", 4) == 0
  out = capsys.readouterr().out
  assert "top S identical: True" in out and "ratio" in out


# ---- no size limits (issue 13, item 2) ---------------------------------------------------------

def test_merge_under_ulimit_64_with_forced_spills(tmp_path):
  """> 64 chunk runs merged with RLIMIT_NOFILE 64: bounded fan-in, same result as brute force."""
  import json
  import subprocess
  import sys
  script = f"""
import json, resource, numpy as np
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
from scone_jax.fgram.count import count_fgrams
rng = np.random.default_rng(5)
docs = [rng.integers(0, 7, rng.integers(1, 30)).tolist() for _ in range(400)]
got = count_fgrams([np.array(d) for d in docs], vocab_size=7, special_ids=(0,), max_n=4, size=300, min_count=2,
                   chunk_tokens=40, merge_block=3, tmp_dir={str(tmp_path)!r})
print(json.dumps({{"docs": docs, "fgrams": [list(g) for g in got.as_tuples()], "counts": got.counts.tolist()}}))
"""
  out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert out.returncode == 0, out.stderr[-2000:]
  result = json.loads(out.stdout)
  assert sum(len(d) + 1 for d in result["docs"]) // 40 > 64  # more chunk runs than file descriptors
  expected = brute_force_fgrams(result["docs"], {0}, 4, 300, 2)
  assert list(zip(map(tuple, result["fgrams"]), result["counts"])) == expected
  assert os.listdir(tmp_path) == []


def test_indices_widen_past_int32(tmp_path, monkeypatch):
  """Documents longer than the int32 index limit: run indices and inverses become int64 (the
  limit lowered to 50 stands in for 2^31 - 1), the counts stay exact."""
  monkeypatch.setattr(count_lib, "INT32_INDEX_LIMIT", 50)
  keys = np.arange(60, dtype=np.uint64) % np.uint64(7)
  _, _, inverse = sort_and_count(keys, 3)
  assert inverse.dtype == np.int64 and count_lib.index_dtype(50) == np.int32
  rng = np.random.default_rng(6)
  docs = [rng.integers(0, 5, 300) for _ in range(3)]  # each document alone is past the limit
  ranked = count_fgrams(docs, vocab_size=5, max_n=4, size=100, min_count=2, chunk_tokens=1000, tmp_dir=str(tmp_path))
  assert as_pairs(ranked) == brute_force_fgrams(docs, set(), 4, 100, 2)


def test_ids_and_keys_that_cannot_fit_are_refused(tmp_path):
  with pytest.raises(UserError, match="int32"):
    count_fgrams([[1, 2]], vocab_size=1 << 31, max_n=2, size=1, min_count=1, tmp_dir=str(tmp_path))
  counter = count_lib._PassCounter(str(tmp_path), [], vocab_size=(1 << 31) - 1, min_count=1, merge_block=4,
                                   bars=None)
  counter.survivor_keys[2] = np.zeros(1 << 34, dtype=np.uint8)  # stands in for 2^34 surviving bigrams
  with pytest.raises(UserError, match="overflow 64-bit"):
    counter.run_pass(3, last=True)


def test_parquet_is_large_list_and_readers_take_both(tmp_path):
  import pyarrow as pa
  import pyarrow.parquet as pq
  docs = [[3, 4, 5, 6]] * 6
  fg = tmp_path / "fg"
  vocab_lib.save(count_fgrams(docs, vocab_size=8, max_n=3, size=5, min_count=2, tmp_dir=str(tmp_path)), str(fg))
  table = pq.read_table(fg / "fgrams.parquet")
  assert pa.types.is_large_list(table.schema.field("tokens").type)
  small = pa.table({"tokens": table.column("tokens").cast(pa.list_(pa.int32())), "count": table.column("count")})
  pq.write_table(small, tmp_path / "old.parquet")
  flat, offsets, counts = vocab_lib.read_rows(str(tmp_path / "old.parquet"))
  loaded = vocab_lib.load(str(fg))
  assert np.array_equal(flat, loaded.flat) and np.array_equal(offsets, loaded.offsets)
  assert np.array_equal(counts, loaded.counts)
