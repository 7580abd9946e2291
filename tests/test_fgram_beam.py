"""The Beam f-gram counter (scone_jax/fgram/beam_count.py) vs the local counter and brute force:
numpy kernels (hash collisions forced), the pipeline on the FnApi runner (in-process and with 2
worker processes) and on the Dask runner over a loopback LocalCluster, sharded parquet output."""
from __future__ import annotations

import collections
import os

import numpy as np
import pytest

from scone_jax.data.shards import shard_paths
from scone_jax.errors import UserError
from scone_jax.fgram import beam_count, beam_kernels, beam_runner, build as build_lib, vocab as vocab_lib
from scone_jax.fgram.count import count_fgrams
from tests.reference import brute_force_fgrams
from tests.test_fgram_count import make_data, run_cli

SPECIALS = {0, 1, 2}
IN_PROCESS = "--runner=FnApiRunner --direct_num_workers=1 --direct_running_mode=in_memory"
TWO_PROCESSES = "--runner=FnApiRunner --direct_num_workers=2 --direct_running_mode=multi_processing"


def pairs(v):
  return list(zip(v.as_tuples(), v.counts.tolist()))


@pytest.fixture(scope="module")
def tied(tmp_path_factory):
  """A corpus with many ties at every count (small vocabulary, repeated phrases of 2..5 tokens)."""
  rng = np.random.default_rng(11)
  phrases = [rng.integers(3, 12, rng.integers(2, 6)).tolist() for _ in range(12)]
  docs = []
  for i in range(150):
    doc = rng.integers(0, 12, rng.integers(0, 25)).tolist()
    doc[len(doc) // 2:len(doc) // 2] = phrases[i % 12] + phrases[(i * 5) % 12]
    docs.append(doc)
  return make_data(tmp_path_factory.mktemp("tied"), docs, num_shards=4), docs


def boundary_is_tied(expected, all_ranked, size):
  """The S-th f-gram's count is shared with f-grams ranked after S (the cutoff cuts a tie)."""
  return len(all_ranked) > size and all_ranked[size][1] == expected[-1][1]


# ---- numpy kernels -------------------------------------------------------------------------------

def test_group_rows_is_exact_under_forced_hash_collisions():
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 4, (500, 3)).astype(np.int32)
  counts = rng.integers(1, 9, 500)
  expected = collections.Counter()
  for row, c in zip(map(tuple, tokens.tolist()), counts.tolist()):
    expected[row] += c
  for hashes in (beam_kernels.tuple_hashes(tokens), np.zeros(500, np.uint64),  # every row collides
                 (beam_kernels.tuple_hashes(tokens) % np.uint64(3))):            # a few hashes for many rows
    h, t, c, inverse = beam_kernels.group_exact(hashes, tokens, counts)
    assert dict(zip(map(tuple, t.tolist()), c.tolist())) == dict(expected)
    assert np.array_equal(t[inverse], tokens) and len(t) == len(expected)


def test_count_shard_and_membership_match_brute_force(monkeypatch):
  rng = np.random.default_rng(1)
  tokens = rng.integers(-1, 4, 400).astype(np.int32)  # -1 = separator
  tokens[-1] = -1

  def brute(n, allowed=None):
    c = collections.Counter()
    for i in range(len(tokens) - n + 1):
      g = tuple(tokens[i:i + n].tolist())
      if -1 in g or (allowed is not None and (g[:-1] not in allowed or g[1:] not in allowed)):
        continue
      c[g] += 1
    return c

  for collide, vocab_size in ((False, None), (False, 4), (True, None)):
    if collide:  # every window hashes alike: only the exact paths can get it right
      monkeypatch.setattr(beam_kernels, "_fnv", lambda h, col: np.zeros(len(col), np.uint64))
    got = beam_kernels.count_shard(tokens, 2, vocab_size=vocab_size)
    assert as_counter(got, vocab_size) == brute(2)
    survivors = {g for g, k in brute(2).items() if k >= 6}
    rows = np.array(sorted(survivors), np.int32).reshape(-1, 2)
    bits = beam_kernels.id_bits(vocab_size)
    if beam_kernels.packs(2, bits):
      known = beam_kernels.Grams(2, beam_kernels.pack_rows(rows, bits), None, None)
    else:
      known = beam_kernels.sorted_by_key(beam_kernels.Grams(2, beam_kernels.tuple_hashes(rows), rows, None))
    got = beam_kernels.count_shard(tokens, 3, known, vocab_size=vocab_size)
    assert as_counter(got, vocab_size) == brute(3, survivors)
    if got.tokens is not None:
      assert np.array_equal(got.keys, beam_kernels.tuple_hashes(got.tokens))
    else:
      assert np.array_equal(got.keys, beam_kernels.pack_rows(got.rows(bits), bits))


def as_counter(grams, vocab_size):
  rows = grams.rows(beam_kernels.id_bits(vocab_size))
  assert len(set(map(tuple, rows.tolist()))) == len(rows)  # distinct
  return dict(zip(map(tuple, rows.tolist()), grams.counts.tolist()))


def test_merge_grams_sums_exactly_across_pieces():
  rng = np.random.default_rng(3)
  for n, bits, collide in ((3, 4, False), (5, 20, False), (5, 20, True)):  # packed keys, hashed rows, one hash
    pieces, expected = [], collections.Counter()
    for _ in range(4):
      rows = rng.integers(0, 3, (200, n)).astype(np.int32)
      grams = np.unique(rows, axis=0)
      counts = rng.integers(1, 2**40, len(grams))
      keys = beam_kernels.pack_rows(grams, bits) if beam_kernels.packs(n, bits) else beam_kernels.tuple_hashes(grams)
      keys = keys * np.uint64(0) if collide else keys
      tokens = None if beam_kernels.packs(n, bits) else grams
      pieces.append(beam_kernels.Grams(n, keys, tokens, counts))
      for g, c in zip(map(tuple, grams.tolist()), counts.tolist()):
        expected[g] += c
    merged = beam_kernels.merge_grams(pieces, n, bits)
    rows = merged.rows(bits)
    assert dict(zip(map(tuple, rows.tolist()), merged.counts.tolist())) == dict(expected)
    assert np.all(np.diff(merged.keys.astype(np.float64)) >= 0)  # ascending key order
    kept = {g for g, c in expected.items() if c % 3 == 0}
    known = merged.take(np.array([tuple(r) in kept for r in rows.tolist()], bool))
    for p in pieces:
      assert beam_kernels.members(p, known).tolist() == [tuple(r) in kept for r in p.rows(bits).tolist()]


def test_shard_tokens_is_the_local_counters_stream(tmp_path):
  from scone_jax.fgram.count import document_tokens, mask_specials
  docs = [[5, 6, 1, 7], [], [8], [9, 9, 2, 9]]
  data_dir = make_data(tmp_path, docs, num_shards=1)
  path = shard_paths(data_dir, "train")[0]
  got = beam_kernels.shard_tokens(path, 12, SPECIALS)
  expected = mask_specials(np.concatenate([document_tokens(np.array(d, np.int32), i, 12, "x")
                                           for i, d in enumerate(docs)]), SPECIALS)
  assert np.array_equal(got, expected)
  with pytest.raises(UserError, match="document 3 holds token id 9"):
    beam_kernels.shard_tokens(path, 9, SPECIALS)


def test_member_keys():
  rng = np.random.default_rng(2)
  known = np.unique(rng.integers(0, 1 << 40, 3000).astype(np.uint64))
  queries = np.concatenate([known, rng.integers(0, 1 << 40, 5000).astype(np.uint64)])
  assert np.array_equal(beam_kernels.member_keys(known, queries), np.isin(queries, known))
  assert not beam_kernels.member_keys(known[:0], queries).any()


def test_parse_beam_args():
  assert beam_runner.parse_beam_args("") == beam_runner.DEFAULT_BEAM_ARGS
  assert beam_runner.parse_beam_args("--temp_location=/x")[-1] == "--temp_location=/x"
  assert beam_runner.parse_beam_args("--runner=DaskRunner --dask_client_address=127.0.0.1:1") == [
      "--runner=scone_jax.fgram.beam_dask.DaskRunner", "--dask_client_address=127.0.0.1:1"]
  assert beam_runner.parse_beam_args("--runner DataflowRunner --project 'my p'") == [
      "--runner", "DataflowRunner", "--project", "my p"]
  with pytest.raises(UserError, match="shell"):
    beam_runner.parse_beam_args("--project='p")


def test_sharded_vocabulary_round_trip_and_hashes(tmp_path):
  docs = [[3, 4, 5, 6, 7]] * 4 + [[4, 5, 6]] * 3
  counted = count_fgrams(docs, vocab_size=9, max_n=4, size=20, min_count=2, tmp_dir=str(tmp_path))
  one, sharded = tmp_path / "one", tmp_path / "sharded"
  vocab_lib.save(counted, str(one))
  vocab_lib.save(counted, str(sharded), rows_per_file=4)
  names = vocab_lib.file_names(len(counted), 4)
  assert sorted(n for n in os.listdir(sharded) if n.endswith(".parquet")) == names
  assert names[0] == "fgrams-00000-of-00003.parquet" and vocab_lib.file_names(4, 4) == [vocab_lib.PARQUET]
  a, b = vocab_lib.load(str(one)), vocab_lib.load(str(sharded))
  assert pairs(a) == pairs(b) == pairs(counted)
  from scone_jax.integrity import file_sha256
  assert a.meta.parquet_sha256 == file_sha256(str(one / vocab_lib.PARQUET))  # one file: the file's hash
  listing = "".join(f"{file_sha256(str(sharded / n))}  {n}\n" for n in names)
  import hashlib
  assert b.meta.parquet_sha256 == hashlib.sha256(listing.encode()).hexdigest()
  os.remove(sharded / names[1])
  with pytest.raises(UserError, match="missing"):
    vocab_lib.load(str(sharded))


# ---- the pipeline ---------------------------------------------------------------------------------

@pytest.mark.parametrize("size,min_count,sample_every,num_buckets,rows_per_file", [
    (22, 2, 2, 5, 6),  # small S, a tie cut at S, splitters (several ranges per length), 4 files
    pytest.param(39, 3, None, None, vocab_lib.ROWS_PER_FILE, marks=pytest.mark.slow),  # defaults: one file
    pytest.param(5000, 1, 3, 3, 97, marks=pytest.mark.slow),                           # every n-gram (c_min 1)
])
def test_beam_in_process_equals_local_and_brute_force(tied, tmp_path, size, min_count, sample_every, num_buckets,
                                                       rows_per_file):
  data_dir, docs = tied
  got = beam_count.count_fgrams_beam(shard_paths(data_dir, "train"), vocab_size=12, special_ids=SPECIALS, max_n=5,
                                     size=size, min_count=min_count, beam_args=IN_PROCESS, tmp_dir=str(tmp_path),
                                     sample_every=sample_every, num_buckets=num_buckets, rows_per_file=rows_per_file)
  expected = brute_force_fgrams(docs, SPECIALS, 5, size, min_count)
  assert pairs(got) == expected
  if size < 1000:
    assert boundary_is_tied(expected, brute_force_fgrams(docs, SPECIALS, 5, 10**6, min_count), size)
  local = count_fgrams(documents_in_order(docs), vocab_size=12, special_ids=SPECIALS, max_n=5, size=size,
                       min_count=min_count, tmp_dir=str(tmp_path))
  assert np.array_equal(got.flat, local.flat) and np.array_equal(got.offsets, local.offsets)
  assert np.array_equal(got.counts, local.counts) and got.meta == local.meta
  assert os.listdir(tmp_path) == []


def documents_in_order(docs):
  return [np.array(d, dtype=np.int32) for d in docs]


def test_beam_finds_nothing_and_says_so(tied, tmp_path):
  data_dir, _ = tied
  got = beam_count.count_fgrams_beam(shard_paths(data_dir, "train"), vocab_size=12, special_ids=SPECIALS, max_n=3,
                                     size=10, min_count=10**6, beam_args=IN_PROCESS, tmp_dir=str(tmp_path))
  assert len(got) == 0 and got.meta.tokens_counted > 0


def build_both(data_dir, tmp_path, beam_args, *, size, min_count, rows_per_file):
  kw = dict(max_n=5, size=size, min_count=min_count, rows_per_file=rows_per_file)
  local = build_lib.build(data_dir, str(tmp_path / "local"), **kw)
  beam = build_lib.build(data_dir, str(tmp_path / "beam"), runner="beam", beam_args=beam_args, **kw)
  return local, beam


def assert_same_directories(a, b):
  names = sorted(os.listdir(a))
  assert names == sorted(os.listdir(b))
  for name in names:  # the same files, byte for byte (meta.json holds the combined parquet sha256)
    with open(os.path.join(a, name), "rb") as fa, open(os.path.join(b, name), "rb") as fb:
      assert fa.read() == fb.read(), name


@pytest.mark.slow
def test_beam_two_worker_processes_equal_local_and_brute_force(tied, tmp_path):
  data_dir, docs = tied
  local, beam = build_both(data_dir, tmp_path, TWO_PROCESSES, size=31, min_count=2, rows_per_file=8)
  expected = brute_force_fgrams(docs, SPECIALS, 5, 31, 2)
  assert boundary_is_tied(expected, brute_force_fgrams(docs, SPECIALS, 5, 10**6, 2), 31)
  assert pairs(beam) == pairs(local) == expected and beam.meta == local.meta
  assert_same_directories(tmp_path / "local", tmp_path / "beam")
  assert len(vocab_lib.parquet_files(str(tmp_path / "beam"))) == 4


@pytest.fixture
def dask_cluster():
  distributed = pytest.importorskip("distributed")
  with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                dashboard_address=None, memory_limit="2GiB") as cluster:
    yield cluster.scheduler_address.replace("tcp://", "")


@pytest.mark.slow
def test_beam_on_dask_local_cluster_equals_local_and_brute_force(tied, tmp_path, dask_cluster, capsys):
  data_dir, docs = tied
  args = ["fgrams", "build", "--data", data_dir, "--max_n", 5, "--size", 26, "--min_count", 2]
  assert run_cli(*args, "--out", tmp_path / "local") == 0
  assert run_cli(*args, "--runner", "beam", "--out", tmp_path / "beam",
                 f"--beam_args=--runner=DaskRunner --dask_client_address={dask_cluster}") == 0
  assert "wrote 26 f-grams" in capsys.readouterr().out
  local, beam = vocab_lib.load(str(tmp_path / "local")), vocab_lib.load(str(tmp_path / "beam"))
  expected = brute_force_fgrams(docs, SPECIALS, 5, 26, 2)
  assert boundary_is_tied(expected, brute_force_fgrams(docs, SPECIALS, 5, 10**6, 2), 26)
  assert pairs(beam) == pairs(local) == expected and beam.meta == local.meta
  assert_same_directories(tmp_path / "local", tmp_path / "beam")
  # Sharded output through the Dask runner as well.
  local, beam = build_both(data_dir, tmp_path / "sharded",
                           f"--runner=DaskRunner --dask_client_address={dask_cluster}",
                           size=60, min_count=2, rows_per_file=16)
  assert pairs(beam) == pairs(local) == brute_force_fgrams(docs, SPECIALS, 5, 60, 2)
  assert_same_directories(tmp_path / "sharded" / "local", tmp_path / "sharded" / "beam")


@pytest.mark.slow
def test_bench_count_beam_runs_and_agrees(capsys):
  assert run_cli("bench", "count", "--runner", "beam", "--tokens", 200000, "--shard_tokens", 50000, "--vocab_size", 64,
                 "--size", 2000, "--max_n", 3) == 0
  out = capsys.readouterr().out
  assert "identical to local: True" in out and "per core" in out
