"""`scone-jax fgrams tag`: every position's tag equals the brute-force longest match over the whole
document; the pipeline matches whole documents (a row that continues a document matches across
its start); training on TAGS equals training that matches in the pipeline; TAGS from other data,
another f-gram file or with a shard changed are refused."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from scone_jax import experiment
from scone_jax.cli import main
from scone_jax.data import pipeline, shards
from scone_jax.fgram import vocab as fgram_vocab
from scone_jax.fgram.build import build
from scone_jax.train import loop
from tests.helpers import make_data, read_metrics, tiny_bindings
from tests.reference import brute_force_match


@pytest.fixture(scope="module")
def tagged(tmp_path_factory):
  root = tmp_path_factory.mktemp("tags")
  data, docs = make_data(str(root / "data"), docs=150, max_len=80)
  build(data, str(root / "fg"), max_n=3, size=60, min_count=2)
  assert main(["fgrams", "tag", str(root / "fg"), "--data", data, "--out", str(root / "tags"), "--processes", "2"]) == 0
  return {"root": root, "data": data, "docs": docs, "fg": str(root / "fg"), "tags": str(root / "tags")}


def test_tags_equal_the_brute_force_match_of_every_document(tagged):
  vocab = fgram_vocab.load(tagged["fg"])
  grams, k = vocab.as_tuples(), vocab.meta.max_n
  meta = shards.load_meta(tagged["data"])
  for split in ("train", "validation"):
    for path in shards.shard_paths(tagged["data"], split):
      docs = shards.ArrayRecordReader(path)
      tags = shards.ArrayRecordReader(os.path.join(tagged["tags"], os.path.basename(path)))
      assert docs.num_records() == tags.num_records() > 0
      for d, t in zip(docs.read(list(range(docs.num_records()))), tags.read(list(range(tags.num_records())))):
        inputs = np.concatenate([[meta.bos_id], shards.decode_document(d)])
        _, want = brute_force_match(grams, k, inputs[None])
        np.testing.assert_array_equal(np.frombuffer(t, np.uint8), want[0])


def assert_same_tags(a, b):
  names = sorted(os.listdir(a))
  assert names == sorted(os.listdir(b)) and "meta.json" in names
  for name in names:  # byte for byte: the shards, and meta.json (it holds every shard's sha256)
    with open(os.path.join(a, name), "rb") as fa, open(os.path.join(b, name), "rb") as fb:
      assert fa.read() == fb.read(), name


def test_beam_tags_are_the_local_tags_byte_for_byte(tagged, tmp_path):
  """In-process FnApi runner, with the packed-key joins (|V| small: K ids fit 64 bits) and, with
  --max_n 5 f-grams, the hashed ones (ids forced to 32 bits)."""
  from scone_jax.fgram import beam_tags
  out = tmp_path / "beam"
  assert main(["fgrams", "tag", tagged["fg"], "--data", tagged["data"], "--out", str(out), "--runner", "beam",
               "--beam_args=--runner=FnApiRunner --direct_num_workers=1 --direct_running_mode=in_memory"]) == 0
  assert_same_tags(tagged["tags"], out)
  fg5 = str(tmp_path / "fg5")
  build(tagged["data"], fg5, max_n=5, size=200, min_count=2)
  assert max(len(g) for g in fgram_vocab.load(fg5).as_tuples()) == 5
  local, beam = tmp_path / "local5", tmp_path / "beam5"
  assert main(["fgrams", "tag", fg5, "--data", tagged["data"], "--out", str(local), "--processes", "1"]) == 0
  original = beam_tags.id_bits
  try:  # 2 ids per key at most: lengths 3..5 take the hashed path
    beam_tags.id_bits = lambda vocab_size: 32
    assert main(["fgrams", "tag", fg5, "--data", tagged["data"], "--out", str(beam), "--runner", "beam",
                 "--beam_args=--runner=FnApiRunner --direct_num_workers=1 --direct_running_mode=in_memory"]) == 0
  finally:
    beam_tags.id_bits = original
  assert_same_tags(local, beam)


@pytest.mark.slow
def test_beam_tags_on_a_dask_local_cluster(tagged, tmp_path):
  distributed = pytest.importorskip("distributed")
  with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                dashboard_address=None, memory_limit="2GiB") as cluster:
    address = cluster.scheduler_address.replace("tcp://", "")
    assert main(["fgrams", "tag", tagged["fg"], "--data", tagged["data"], "--out", str(tmp_path / "dask"),
                 "--runner", "beam", f"--beam_args=--runner=DaskRunner --dask_client_address={address}"]) == 0
  assert_same_tags(tagged["tags"], tmp_path / "dask")


def test_rows_that_continue_a_document_match_across_their_start(tagged):
  """Rows of 16 inputs cut documents of up to 80 tokens: the match of every input of every row,
  and the K-1 inputs before it, are those of the whole document."""
  vocab = fgram_vocab.load(tagged["fg"])
  grams, k = vocab.as_tuples(), vocab.meta.max_n
  exp = experiment.load(["models/tiny.gin", "methods/scone.gin", "runs/cpu.gin"],
                        tiny_bindings(tagged["data"], 1, FGRAM_DIR=f"'{tagged['fg']}'", **{"DataConfig.seq_len": 16}))
  spec = exp.pipeline_spec("validation")
  streams: dict[int, list] = {}
  for b in pipeline.eval_batches(spec):
    for r in range(b["inputs"].shape[0]):
      keep = b["segment_ids"][r] > 0
      streams.setdefault(r, []).extend(zip(b["inputs"][r][keep].tolist(), b["match_len"][r][keep].tolist(),
                                           [tuple(h) for h in b["history"][r][keep].tolist()]))
  across = 0
  for items in streams.values():   # a stream's inputs, row after row: documents back to back, each from BOS
    doc: list = []
    for token, n, history in items + [(2, 1, ())]:
      if token == 2 and doc:   # BOS: the document before is complete
        tokens = np.array([t for t, _, _ in doc])
        _, want = brute_force_match(grams, k, tokens[None])
        np.testing.assert_array_equal([m for _, m, _ in doc], want[0])
        for j, (_, _, h) in enumerate(doc):
          before = [-1] * (k - 1) + tokens[:j].tolist()
          assert list(h) == before[len(before) - (k - 1):]
        doc = []
      doc.append((token, n, history))
    across += sum(1 for j in range(0, len(items), 16) if items[j][1] >= 2)
  assert across > 0   # some rows start inside a matched f-gram: they match now


@pytest.mark.slow
def test_training_on_tags_equals_matching_in_the_pipeline(tagged):
  runs = {}
  for name, extra in (("match", {}), ("tags", {"TAGS_DIR": f"'{tagged['tags']}'"})):
    exp = experiment.load(["models/tiny.gin", "methods/scone.gin", "runs/cpu.gin"],
                          tiny_bindings(tagged["data"], 4, FGRAM_DIR=f"'{tagged['fg']}'", **extra))
    if name == "tags":
      assert not any(type(f).__name__ == "MatchDocument" for f in exp.method.document_features())   # no matcher
    loop.train(exp, str(tagged["root"] / f"run_{name}"), quiet=True)
    runs[name] = read_metrics(str(tagged["root"] / f"run_{name}"))
  assert sorted(runs["match"]) == sorted(runs["tags"]) == [1, 2, 3, 4]
  for s in runs["match"]:
    assert runs["match"][s]["loss"] == runs["tags"][s]["loss"], s


def test_tags_of_other_inputs_are_refused(tagged, tmp_path, capsys):
  import shutil
  other, _ = make_data(str(tmp_path / "other"), docs=150, max_len=80, seed=3)
  base = ["train", "--gin_file", "models/tiny.gin", "--gin_file", "methods/scone.gin", "--gin_file", "runs/cpu.gin",
          f"--gin.FGRAM_DIR='{tagged['fg']}'", "--workdir", str(tmp_path / "run")]
  bad = tmp_path / "bad_tags"
  shutil.copytree(tagged["tags"], bad)
  shard = sorted(p for p in os.listdir(bad) if p.startswith("train-"))[0]
  with open(bad / shard, "ab") as f:
    f.write(b"x")
  cases = [([f"--gin.DATA_DIR='{tagged['data']}'", f"--gin.TAGS_DIR='{bad}'"], "does not match the sha256"),
           ([f"--gin.DATA_DIR='{tagged['data']}'", f"--gin.TAGS_DIR='{tagged['fg']}'"], "fgrams tag"),
           ([f"--gin.DATA_DIR='{tagged['data']}'", f"--gin.TAGS_DIR='{tagged['tags']}'", "--gin.FgramConfig.size=10"],
            "FgramConfig.size")]
  for flags, needle in cases:
    capsys.readouterr()
    assert main(base + flags) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], (flags, err)
  # fgrams tag refuses to write over its inputs, and f-grams of other data.
  assert main(["fgrams", "tag", tagged["fg"], "--data", tagged["data"], "--out", tagged["data"]]) == 2
  assert main(["fgrams", "tag", tagged["fg"], "--data", other, "--out", str(tmp_path / "t2")]) == 2
  assert not os.path.exists(tmp_path / "t2")
  capsys.readouterr()   # Beam options without the Beam runner; a changed f-gram file under the Beam runner
  assert main(["fgrams", "tag", tagged["fg"], "--data", tagged["data"], "--out", str(tmp_path / "t3"),
               "--beam_args=--runner=DaskRunner"]) == 2
  changed = tmp_path / "fg_changed"
  shutil.copytree(tagged["fg"], changed)
  with open(changed / "fgrams.parquet", "ab") as f:
    f.write(b"x")
  assert main(["fgrams", "tag", str(changed), "--data", tagged["data"], "--out", str(tmp_path / "t3"),
               "--runner", "beam"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 2 and "only with --runner beam" in err[0] and "does not match the sha256" in err[1], err
  assert not os.path.exists(tmp_path / "t3")
  with open(os.path.join(tagged["tags"], "meta.json")) as f:
    assert json.load(f)["num_documents"] == 150 + 12


def test_fgrams_match_prints_the_tags_as_it_prints_matches(tagged, capsys):
  capsys.readouterr()
  assert main(["fgrams", "match", tagged["fg"], "--data", tagged["data"], "--split", "train"]) == 0
  matched = capsys.readouterr().out
  assert main(["fgrams", "match", tagged["fg"], "--data", tagged["data"], "--split", "train", "--tags", tagged["tags"]]) == 0
  assert capsys.readouterr().out == matched and matched.count("\n") == 150


_MEASURE = """
import itertools, json, sys
from scone_jax import experiment
from scone_jax.data import pipeline
exp = experiment.load(["models/tiny.gin", "methods/scone.gin", "runs/cpu.gin"], json.loads(sys.argv[1]))
spec = exp.pipeline_spec("train", prefetch=0)
batches = list(itertools.islice(iter(pipeline.make_dataset(spec)), 30))
assert all("unique_packed_tokens" in b for b in batches)
hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM")][0].split()[1]
print(json.dumps({"vocab_loaded": exp.method.vocab is not None, "peak_kb": int(hwm)}))
"""


@pytest.mark.slow
def test_a_data_process_with_tags_holds_no_vocabulary(tmp_path):
  """The training pipeline on TAGS of |V_f| ~ 16K f-grams and of 4M f-grams: the same peak
  resident memory (within 10%), the vocabulary never read. (Without TAGS the same pipeline peaked
  at 275 MB and 1,330 MB: the 4M vocabulary and its matcher, measured once; WORKSPACE.md.)"""
  import subprocess
  import sys

  from scone_jax.fgram.vocab import FgramMeta, FgramVocab, save
  data, _ = make_data(str(tmp_path / "data"), vocab=2100, docs=400, max_len=120)
  build(data, str(tmp_path / "fg_small"), max_n=2, size=16384, min_count=1)
  ids = np.arange(4, 2004, dtype=np.int32)   # every bigram over 2,000 tokens: 4M f-grams, closed under suffixes
  pairs = np.stack(np.meshgrid(ids, ids, indexing="ij"), axis=-1).reshape(-1, 2)
  n = len(pairs)
  meta = FgramMeta(2, n, 1, 0, shards.data_fingerprint(data), n, 2100)
  save(FgramVocab(pairs.reshape(-1).copy(), np.arange(0, 2 * n + 1, 2, dtype=np.int64),
                  np.arange(n, 0, -1, dtype=np.int64), meta), str(tmp_path / "fg_big"))
  peaks = {}
  for name in ("small", "big"):
    fg, tags = str(tmp_path / f"fg_{name}"), str(tmp_path / f"tags_{name}")
    assert main(["fgrams", "tag", fg, "--data", data, "--out", tags, "--processes", "1"]) == 0
    bindings = tiny_bindings(data, 1, FGRAM_DIR=f"'{fg}'", TAGS_DIR=f"'{tags}'")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", _MEASURE, json.dumps(bindings)], capture_output=True, text=True,
                         cwd=repo, env={**os.environ, "PYTHONPATH": repo}, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert not got["vocab_loaded"]
    peaks[name] = got["peak_kb"]
  print(f"data process peak RSS with TAGS: {peaks['small'] / 1024:.0f} MB at |V_f| "
        f"{fgram_vocab.load_meta(str(tmp_path / 'fg_small')).num_fgrams:,}, {peaks['big'] / 1024:.0f} MB at {n:,}")
  assert abs(peaks["big"] - peaks["small"]) < 0.10 * peaks["small"], peaks


@pytest.mark.slow
def test_ctrl_c_of_a_tagging_pool_is_one_line_and_leaves_nothing(tmp_path):
  """Ctrl-C reaches the whole process group (the command and its worker processes): one line,
  exit 130, no TAGS and no temporary directory left."""
  import signal
  import subprocess
  import sys
  import time
  data, _ = make_data(str(tmp_path / "d"), vocab=500, docs=60000, max_len=400)
  build(data, str(tmp_path / "fg"), max_n=4, size=5000, min_count=2)
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

  def start(out):
    return subprocess.Popen([sys.executable, "-m", "scone_jax.cli", "fgrams", "tag", str(tmp_path / "fg"), "--data", data,
                             "--out", str(tmp_path / out), "--processes", "2"], cwd=repo, stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": repo})

  t0 = time.monotonic()
  assert start("whole").wait(timeout=300) == 0
  took = time.monotonic() - t0
  proc = start("tags")
  time.sleep(0.65 * took)   # start-up is about half of it: this lands while the workers tag
  os.killpg(proc.pid, signal.SIGINT)
  _, err = proc.communicate(timeout=60)
  lines = [line for line in err.splitlines() if line.strip()]
  assert proc.returncode == 130 and lines == ["scone-jax fgrams tag: interrupted"], (proc.returncode, err[-2000:])
  assert not os.path.exists(tmp_path / "tags")
  assert not [n for n in os.listdir(tmp_path) if n.startswith(".tags-")]
