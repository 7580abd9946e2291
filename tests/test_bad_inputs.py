"""The bad-input catalogue (WORKSPACE.md): every row gives exit code 2, a one-line error that names
the input, and leaves nothing half-written."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from scone_jax.cli import main
from scone_jax.fgram.build import build
from tests.helpers import free_port, make_data, tiny_bindings


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_scone_run):
  root = tmp_path_factory.mktemp("bad")
  data, _ = make_data(str(root / "data"), docs=80)
  other, _ = make_data(str(root / "other"), docs=80, seed=5)
  build(data, str(root / "fg"), max_n=3, size=40, min_count=2)
  build(other, str(root / "fg_other"), max_n=3, size=40, min_count=2)
  text = root / "text"
  text.mkdir()
  (text / "a.txt").write_text("def f(x):\n\treturn x + 1\n" * 40)
  (text / "b.txt").write_text("print('hello world')\n" * 40)
  (root / "empty").mkdir()
  (root / "empty" / "e.txt").write_text("")
  (root / "bin").mkdir()
  (root / "bin" / "b.txt").write_bytes(b"abc\x00def")
  (root / "latin").mkdir()
  (root / "latin" / "l.txt").write_bytes("caf\xe9".encode("latin-1"))
  (root / "j1.jsonl").write_text('{"text": "ok"}\nnot json\n')
  (root / "j2.jsonl").write_text('{"body": "no text field"}\n')
  (root / "notspm.model").write_bytes(b"this is not a sentencepiece model")
  # An existing SentencePiece model as most are trained (NFKC, whitespace collapsed: unlike the
  # lossless ones prepare trains), and documents of whitespace only, which it encodes to no token.
  import sentencepiece as spm
  spm.SentencePieceTrainer.train(sentence_iterator=iter(["the cat sat on the mat", "a dog ran to the river"] * 50),
                                 model_prefix=str(root / "nfkc"), vocab_size=20, pad_id=0, eos_id=1, bos_id=2,
                                 unk_id=3, minloglevel=2)
  (root / "blank").mkdir()
  (root / "blank" / "w1.txt").write_text("   \n\n\t\n")
  (root / "blank" / "w2.txt").write_text(" \n")
  (root / "full").mkdir()
  (root / "full" / "x").write_text("x")
  import shutil
  # A run with a checkpoint, and a run directory without one.
  run = str(root / "run")
  assert main(["train", "--gin_file", "models/tiny.gin", "--gin_file", "runs/cpu.gin", *[f"--gin.{b.replace(' = ', '=')}" for b in tiny_bindings(data, 1)],
               "--workdir", run, "--quiet"]) == 0
  shutil.copytree(run, root / "run_stray")   # with an empty directory where a checkpoint step would be
  os.makedirs(root / "run_stray" / "checkpoints" / "99")
  os.makedirs(root / "run_no_ckpt")
  with open(root / "run_no_ckpt" / "config.gin", "w") as f:
    f.write(open(os.path.join(run, "config.gin")).read())
  # A data dir with one corrupted shard byte; one with a broken meta.json.
  import shutil
  shutil.copytree(data, root / "corrupt")
  shard = sorted(p for p in os.listdir(root / "corrupt") if p.startswith("train-"))[0]
  raw = bytearray(open(root / "corrupt" / shard, "rb").read())
  raw[len(raw) // 2] ^= 0xFF
  open(root / "corrupt" / shard, "wb").write(bytes(raw))
  shutil.copytree(data, root / "badmeta")
  (root / "badmeta" / "meta.json").write_text("{ not json")
  # f-grams whose parquet no longer matches its recorded hash.
  shutil.copytree(root / "fg", root / "fg_corrupt")
  with open(root / "fg_corrupt" / "fgrams.parquet", "ab") as f:
    f.write(b"tampered")
  _broken_artifacts(root, data, tiny_scone_run)
  return {"root": str(root), "data": data, "other": other, "run": run, "scone_run": tiny_scone_run["workdir"]}


def _broken_artifacts(root, data, scone):
  """Artifacts that are inconsistent in one way each (issue 15: every artifact is a closed set)."""
  import dataclasses
  import json
  import shutil

  import numpy as np
  import pyarrow as pa
  import pyarrow.parquet as pq

  from scone_jax.data import shards
  from scone_jax.fgram import vocab as fgram_vocab
  from scone_jax.integrity import file_sha256

  def copy(name):
    shutil.copytree(data, root / name)
    return root / name

  def meta(path, edit):
    raw = json.load(open(path / "meta.json"))
    edit(raw)
    json.dump(raw, open(path / "meta.json", "w"))

  os.remove(copy("no_train_shard") / shards.shard_name("train", 1, 2))
  os.remove(copy("no_validation_shard") / shards.shard_name("validation", 0, 2))
  oov = copy("oov")   # one token id past the vocabulary, with a consistent recorded hash
  shard = oov / shards.shard_name("train", 0, 2)
  reader = shards.ArrayRecordReader(str(shard))
  docs = [np.frombuffer(r, "<i4").copy() for r in reader.read(list(range(reader.num_records())))]
  reader.close()
  docs[0][0] = 64
  os.remove(shard)
  writer = shards.ArrayRecordWriter(str(shard), shards.WRITER_OPTIONS)
  for d in docs:
    writer.write(shards.encode_document(d))
  writer.close()
  meta(oov, lambda raw: raw["extra"]["shard_sha256"].update({shard.name: file_sha256(str(shard))}))
  legacy = copy("legacy_truncated")   # written before hashes were recorded, then cut short
  meta(legacy, lambda raw: raw["extra"].pop("shard_sha256"))
  cut = legacy / shards.shard_name("train", 0, 2)
  cut.write_bytes(cut.read_bytes()[:cut.stat().st_size // 2])
  good = fgram_vocab.load(str(root / "fg"))
  unclosed = fgram_vocab.FgramVocab.from_tuples([(5, 6, 7)], [9], dataclasses.replace(good.meta, min_count=1))
  fgram_vocab.save(unclosed, str(root / "fg_unclosed"))   # (5, 6, 7) without its suffix (6, 7)
  nocount = root / "fg_nocount"
  shutil.copytree(root / "fg", nocount)
  table = pq.read_table(nocount / "fgrams.parquet")
  pq.write_table(pa.table({"tokens": table.column("tokens")}), nocount / "fgrams.parquet")
  meta(nocount, lambda raw: raw.update(parquet_sha256=file_sha256(str(nocount / "fgrams.parquet")), meta_sha256=""))
  store = root / "store_missing_chunk"
  shutil.copytree(scone["store"], store)
  os.remove(store / "embeddings" / "c" / "1" / "0")
  import tensorstore as ts
  rewritten = root / "store_rewritten_block"   # block 1 holds other rows, every crc32c valid
  shutil.copytree(scone["store"], rewritten)
  array = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(rewritten / "embeddings")}}).result()
  array[64:128].write(array[64:128].read().result()[::-1].copy()).result()


def _train(e, *extra, data=None):
  return ["train", "--gin_file", "models/tiny.gin", "--gin_file", "runs/cpu.gin", f"--gin.DATA_DIR='{data or e['data']}'", *extra,
          "--workdir", f"{e['root']}/out_train"]


def _tiny_fs(path: str, *, read_only: bool = False) -> bool:
  os.makedirs(path, exist_ok=True)
  if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", path], capture_output=True).returncode:
    return False
  if read_only:
    subprocess.run(["mount", "-o", "remount,ro", path], check=True)
  return True


# (id, argv builder, text the one-line error must contain, path that must not exist afterwards)
ROWS = [
    ("prepare-glob-matches-nothing", lambda e: ["prepare", "--input", f"{e['root']}/nothing/*.txt", "--out", f"{e['root']}/o1"], "nothing", "o1"),
    ("prepare-empty-corpus", lambda e: ["prepare", "--input", f"{e['root']}/empty/*.txt", "--out", f"{e['root']}/o2"], "empty", "o2"),
    ("prepare-empty-corpus-with-vocab", lambda e: ["prepare", "--input", f"{e['root']}/empty/*.txt", "--vocab", f"{e['root']}/nfkc.model", "--out", f"{e['root']}/o11"], "holds no documents", "o11"),
    ("prepare-blank-corpus-with-vocab", lambda e: ["prepare", "--input", f"{e['root']}/blank/*.txt", "--vocab", f"{e['root']}/nfkc.model", "--out", f"{e['root']}/o12"], "holds no documents", "o12"),
    ("prepare-binary-file", lambda e: ["prepare", "--input", f"{e['root']}/bin/*.txt", "--out", f"{e['root']}/o3"], "b.txt", "o3"),
    ("prepare-non-utf8-file", lambda e: ["prepare", "--input", f"{e['root']}/latin/*.txt", "--out", f"{e['root']}/o4"], "UTF-8", "o4"),
    ("prepare-jsonl-not-json", lambda e: ["prepare", "--input", f"{e['root']}/j1.jsonl", "--out", f"{e['root']}/o5"], "j1.jsonl", "o5"),
    ("prepare-jsonl-no-text-field", lambda e: ["prepare", "--input", f"{e['root']}/j2.jsonl", "--out", f"{e['root']}/o6"], "text", "o6"),
    ("prepare-vocab-missing", lambda e: ["prepare", "--input", f"{e['root']}/text/*.txt", "--vocab", f"{e['root']}/nope.model", "--out", f"{e['root']}/o7"], "nope.model", "o7"),
    ("prepare-vocab-not-spm", lambda e: ["prepare", "--input", f"{e['root']}/text/*.txt", "--vocab", f"{e['root']}/notspm.model", "--out", f"{e['root']}/o8"], "notspm.model", "o8"),
    ("prepare-out-not-empty", lambda e: ["prepare", "--input", f"{e['root']}/text/*.txt", "--out", f"{e['root']}/full"], "--overwrite", None),
    ("prepare-vocab-size-too-large", lambda e: ["prepare", "--input", f"{e['root']}/text/*.txt", "--vocab_size", "100000", "--out", f"{e['root']}/o9"], "vocab", "o9"),
    ("prepare-unknown-seqio-task", lambda e: ["prepare", "--input", "seqio:no_such_task_xyz", "--out", f"{e['root']}/o10"], "no_such_task_xyz", "o10"),
    ("fgrams-build-data-missing", lambda e: ["fgrams", "build", "--data", f"{e['root']}/nodata", "--max_n", "3", "--size", "10", "--out", f"{e['root']}/f1"], "nodata", "f1"),
    ("fgrams-build-k-below-2", lambda e: ["fgrams", "build", "--data", e["data"], "--max_n", "1", "--size", "10", "--out", f"{e['root']}/f2"], "max_n", "f2"),
    ("fgrams-build-size-0", lambda e: ["fgrams", "build", "--data", e["data"], "--max_n", "3", "--size", "0", "--out", f"{e['root']}/f3"], "size", "f3"),
    ("fgrams-build-nothing-reaches-min-count", lambda e: ["fgrams", "build", "--data", e["data"], "--max_n", "3", "--size", "10", "--min_count", "1000000", "--out", f"{e['root']}/f4"], "min_count", "f4"),
    ("fgrams-build-corrupt-meta-json", lambda e: ["fgrams", "build", "--data", f"{e['root']}/badmeta", "--max_n", "3", "--size", "10", "--out", f"{e['root']}/f5"], "meta.json", "f5"),
    ("fgrams-match-fgrams-from-other-data", lambda e: ["fgrams", "match", f"{e['root']}/fg_other", "--data", e["data"], "--split", "validation", "--format", "jsonl"], "other", None),
    ("fgrams-match-corrupt-parquet", lambda e: ["fgrams", "match", f"{e['root']}/fg_corrupt", "--data", e["data"], "--split", "validation"], "sha256", None),
    ("train-malformed-gin-binding", lambda e: _train(e, "--gin.ModelConfig.d_model="), "d_model", "out_train"),
    ("train-unknown-configurable", lambda e: _train(e, "--gin.NoSuchThing.x=1"), "NoSuchThing", "out_train"),
    ("train-unknown-field", lambda e: _train(e, "--gin.ModelConfig.no_such_field=3"), "no_such_field", "out_train"),
    ("train-gin-file-missing", lambda e: ["train", "--gin_file", "runs/nope.gin", "--workdir", f"{e['root']}/out_train"], "nope.gin", "out_train"),
    ("train-gin-string-without-quotes", lambda e: ["train", "--gin_file", "models/tiny.gin", "--gin_file", "runs/cpu.gin",
                                                   f"--gin.DATA_DIR={e['root']}/data", "--workdir",
                                                   f"{e['root']}/out_train"], "--gin.DATA_DIR=\"'", "out_train"),
    ("train-gin-search-path-missing", lambda e: ["train", "--gin_file", "models/tiny.gin", "--gin_search_paths",
                                                 f"{e['root']}/no_such_dir", "--workdir", f"{e['root']}/out_train"],
     "no_such_dir", "out_train"),
    ("train-data-dir-unset", lambda e: ["train", "--gin_file", "models/tiny.gin", "--gin_file", "runs/cpu.gin", "--workdir", f"{e['root']}/out_train"], "DATA_DIR", "out_train"),
    ("train-data-dir-not-prepared", lambda e: _train(e, data=f"{e['root']}/text"), "meta.json", "out_train"),
    ("train-mesh-does-not-divide-devices", lambda e: _train(e, "--gin.MeshConfig.fsdp=3"), "does not divide", "out_train"),
    ("train-sequence-longer-than-model", lambda e: _train(e, "--gin.DataConfig.seq_len=4096"), "max_seq_len", "out_train"),
    ("train-batch-not-divisible", lambda e: _train(e, "--gin.DataConfig.batch_size=3"), "batch_size", "out_train"),
    ("train-model-vocab-smaller-than-data", lambda e: _train(e, "--gin.ModelConfig.vocab_size=10"), "vocab_size", "out_train"),
    ("train-fgrams-from-other-data", lambda e: _train(e, "--gin_file", "methods/scone.gin", f"--gin.FGRAM_DIR='{e['other']}/../fg_other'"), "other data", "out_train"),
    ("train-fgram-size-larger-than-file", lambda e: _train(e, "--gin_file", "methods/scone.gin", f"--gin.FGRAM_DIR='{e['root']}/fg'", "--gin.FgramConfig.size=100000"), "holds only", "out_train"),
    ("train-corrupted-shard", lambda e: _train(e, data=f"{e['root']}/corrupt"), "sha256", "out_train"),
    ("train-unknown-flag", lambda e: _train(e, "--bogus_flag"), "bogus_flag", "out_train"),
    ("eval-workdir-not-a-run", lambda e: ["eval", "--workdir", f"{e['root']}/text"], "config.gin", None),
    ("eval-run-without-checkpoint", lambda e: ["eval", "--workdir", f"{e['root']}/run_no_ckpt"], "checkpoint", None),
    ("eval-data-dir-missing", lambda e: ["eval", "--workdir", e["run"], "--data", f"{e['root']}/nodata"], "nodata", None),
    ("export-not-a-scone-run", lambda e: ["export", "--workdir", e["run"], "--out", f"{e['root']}/s1"], "not a SCONE run", "s1"),
    ("export-workdir-not-a-run", lambda e: ["export", "--workdir", f"{e['root']}/text", "--out", f"{e['root']}/s2"], "config.gin", "s2"),
    ("export-unknown-dtype", lambda e: ["export", "--workdir", e["run"], "--out", f"{e['root']}/s3", "--dtype", "int4"], "int4", "s3"),
    ("generate-store-on-a-baseline-run", lambda e: ["generate", "--workdir", e["run"], "--store", f"{e['root']}/nostore", "--prompt", "x"], "baseline run", None),
    ("generate-max-new-tokens-below-1", lambda e: ["generate", "--workdir", e["run"], "--prompt", "x", "--max_new_tokens", "0"], "max_new_tokens", None),
    ("generate-top-p-out-of-range", lambda e: ["generate", "--workdir", e["run"], "--prompt", "x", "--top_p", "1.5"], "top_p", None),
    # Issue 15: outputs never eat inputs (scone_jax/outputs.py), settings checked at the boundary.
    ("fgrams-build-out-is-its-data", lambda e: ["fgrams", "build", "--data", e["data"], "--max_n", "3", "--size", "10", "--min_count", "2", "--out", e["data"]], "is the input --data", None),
    ("fgrams-build-out-inside-its-data", lambda e: ["fgrams", "build", "--data", e["data"], "--max_n", "3", "--size", "10", "--min_count", "2", "--out", f"{e['data']}/fg"], "lies inside the input --data", None),
    ("fgrams-build-out-holds-other-files", lambda e: ["fgrams", "build", "--data", e["data"], "--max_n", "3", "--size", "10", "--min_count", "2", "--out", f"{e['root']}/text"], "holds other files", None),
    ("prepare-out-is-its-input-corpus", lambda e: ["prepare", "--input", f"{e['root']}/text/*.txt", "--out", f"{e['root']}/text", "--overwrite"], "contains the input", None),
    ("prepare-overwrite-of-another-artifact", lambda e: ["prepare", "--input", f"{e['root']}/text/*.txt", "--out", f"{e['root']}/fg", "--overwrite"], "holds a f-gram vocabulary", None),
    ("train-workdir-inside-its-data", lambda e: ["train", "--gin_file", "models/tiny.gin", "--gin_file", "runs/cpu.gin", f"--gin.DATA_DIR='{e['data']}'", "--workdir", f"{e['data']}/run"], "lies inside the input DATA_DIR", None),
    ("train-workdir-holds-other-files", lambda e: ["train", "--gin_file", "models/tiny.gin", "--gin_file", "runs/cpu.gin", f"--gin.DATA_DIR='{e['data']}'", "--workdir", f"{e['root']}/text"], "holds other files", None),
    ("train-keep-checkpoints-0", lambda e: _train(e, "--gin.TrainConfig.keep_checkpoints=0"), "keep_checkpoints=0 must be >= 1", "out_train"),
    ("train-checkpoint-every-0", lambda e: _train(e, "--gin.TrainConfig.checkpoint_every=0"), "checkpoint_every=0 must be >= 1", "out_train"),
    ("train-learning-rate-nan", lambda e: _train(e, "--gin.TrainConfig.learning_rate=float('nan')"), "learning_rate", "out_train"),
    ("train-vocab-size-a-string", lambda e: _train(e, "--gin.ModelConfig.vocab_size='64'"), "must be a whole number", "out_train"),
    ("train-stop-after-steps-0", lambda e: _train(e, "--stop_after_steps", "0"), "--stop_after_steps", "out_train"),
    ("eval-max-batches-negative", lambda e: ["eval", "--workdir", e["run"], "--max_batches", "-1"], "--max_batches", None),
    ("export-out-inside-its-run", lambda e: ["export", "--workdir", e["run"], "--out", f"{e['run']}/store"], "lies inside the input --workdir", None),
    ("export-rows-per-shard-negative", lambda e: ["export", "--workdir", e["run"], "--out", f"{e['root']}/s4", "--rows_per_shard", "-4"], "--rows_per_shard", "s4"),
    ("generate-temperature-nan", lambda e: ["generate", "--workdir", e["run"], "--prompt", "x", "--temperature", "nan"], "not a finite number", None),
    ("train-a-train-shard-deleted", lambda e: _train(e, data=f"{e['root']}/no_train_shard"), "is missing (1 of the 2 train shards", "out_train"),
    ("fgrams-build-a-train-shard-deleted", lambda e: ["fgrams", "build", "--data", f"{e['root']}/no_train_shard", "--max_n", "3", "--size", "10", "--out", f"{e['root']}/f6"], "is missing", "f6"),
    ("eval-a-validation-shard-deleted", lambda e: ["eval", "--workdir", e["run"], "--data", f"{e['root']}/no_validation_shard"], "is missing (1 of the 2 validation shards", None),
    ("train-token-id-outside-the-vocabulary", lambda e: _train(e, data=f"{e['root']}/oov"), "outside the vocabulary of 64", "out_train"),
    ("train-legacy-shard-truncated", lambda e: _train(e, data=f"{e['root']}/legacy_truncated"), "cannot be read as a token shard", "out_train"),
    ("train-fgrams-not-closed-under-suffixes", lambda e: _train(e, "--gin_file", "methods/scone.gin", f"--gin.FGRAM_DIR='{e['root']}/fg_unclosed'"), "cannot be matched", "out_train"),
    ("fgrams-match-fgrams-not-closed-under-suffixes", lambda e: ["fgrams", "match", f"{e['root']}/fg_unclosed", "--data", e["data"], "--split", "validation"], "cannot be matched", None),
    ("train-fgrams-parquet-without-count", lambda e: _train(e, "--gin_file", "methods/scone.gin", f"--gin.FGRAM_DIR='{e['root']}/fg_nocount'"), "columns tokens and count", "out_train"),
    ("eval-store-with-a-missing-chunk", lambda e: ["eval", "--workdir", e["scone_run"], "--store", f"{e['root']}/store_missing_chunk", "--tier", "ram"], "is missing", None),
    ("generate-store-with-a-missing-chunk", lambda e: ["generate", "--workdir", e["scone_run"], "--store", f"{e['root']}/store_missing_chunk", "--tier", "ram", "--prompt", "the cat"], "is missing", None),
    ("store-verify-a-block-rewritten", lambda e: ["store", "verify", f"{e['root']}/store_rewritten_block"], "blocks [1] (1 of 3) do not match their hashes", None),
    ("store-verify-not-a-store", lambda e: ["store", "verify", f"{e['root']}/text"], "has no manifest.json", None),
    ("generate-prompt-not-utf8", lambda e: ["generate", "--workdir", e["run"], "--prompt", "ab\udcff"], "not valid UTF-8", None),
    ("eval-stray-empty-step-directory", lambda e: ["eval", "--workdir", f"{e['root']}/run_stray"], "is empty (a stray directory", None),
    ("eval-max-batches-not-a-number", lambda e: ["eval", "--workdir", e["run"], "--max_batches", "x"], "not a whole number", None),
    ("train-grad-clip-negative", lambda e: _train(e, "--gin.TrainConfig.grad_clip=-1.0"), "grad_clip=-1.0 must be >= 0", "out_train"),
    ("train-fgram-layers-0", lambda e: _train(e, "--gin_file", "methods/scone.gin", f"--gin.FGRAM_DIR='{e['root']}/fg'", "--gin.FgramConfig.num_layers=0"), "num_layers=0 must be >= 1", "out_train"),
    ("train-seq-len-1", lambda e: _train(e, "--gin.DataConfig.seq_len=1"), "seq_len=1 must be >= 2", "out_train"),
    ("generate-cache-mb-negative", lambda e: ["generate", "--workdir", e["run"], "--prompt", "x", "--cache_mb", "-1"], "--cache_mb", None),
]


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_bad_input_gets_a_one_line_error(row, env, capsys):
  name, argv, needle, absent = row
  capsys.readouterr()
  try:
    rc = main(argv(env))
  except SystemExit as e:   # argparse usage errors exit from inside the parser
    rc = e.code
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 2, (name, err)
  assert len(err) == 1, (name, err)
  assert needle in err[0], (name, err[0])
  if os.environ.get("SCONE_CATALOGUE"):   # regenerates the table in WORKSPACE.md
    with open(os.environ["SCONE_CATALOGUE"], "a") as f:
      f.write(json.dumps([name, err[0].replace(env["root"], "…")]) + "\n")
  if absent:
    assert not os.path.exists(os.path.join(env["root"], absent)) or not os.listdir(os.path.join(env["root"], absent)), name


@pytest.mark.parametrize("command", ["fgrams-build", "export"])
@pytest.mark.parametrize("read_only", [False, True], ids=["disk-full", "read-only-output-dir"])
def test_disk_full_and_read_only_output(env, tmp_path, capsys, read_only, command):
  mnt = str(tmp_path / "mnt")
  if not _tiny_fs(mnt, read_only=read_only):
    pytest.skip("mounting a tmpfs needs root")
  try:
    out = os.path.join(mnt, "out")
    capsys.readouterr()
    if command == "fgrams-build":
      rc = main(["fgrams", "build", "--data", env["data"], "--max_n", "3", "--size", "40", "--min_count", "2",
                 "--chunk_tokens", "500", "--tmp_dir", mnt, "--out", out])
      finished = os.path.join(out, "meta.json")
    else:   # the shared run's store is ~80 KB in 14 files: it cannot fit in 64 KiB
      rc = main(["export", "--dtype", "float32", "--workdir", env["scone_run"], "--out", out, "--rows_per_shard", "64"])
      finished = os.path.join(out, "manifest.json")
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert ("No space left" in err[0] or "space" in err[0]) if not read_only else ("Read-only" in err[0] or "read-only" in err[0] or "writ" in err[0]), err
    assert not os.path.exists(finished)   # nothing a later command would accept
    if os.environ.get("SCONE_CATALOGUE"):
      with open(os.environ["SCONE_CATALOGUE"], "a") as f:
        f.write(json.dumps([f"{command}-" + ("read-only-output-dir" if read_only else "disk-full"),
                            err[0].replace(str(tmp_path), "…")]) + "\n")
  finally:
    subprocess.run(["umount", mnt], capture_output=True)


# One row per command, run as a real process through the console script's module: the library
# log lines a real shell would show (absl, jax, tensorstore) must not surround the one line.
SHELL_ROWS = ("prepare-vocab-missing", "fgrams-build-size-0", "fgrams-match-corrupt-parquet", "train-keep-checkpoints-0",
              "eval-run-without-checkpoint", "export-not-a-scone-run", "generate-temperature-nan")


@pytest.mark.slow
@pytest.mark.parametrize("name", SHELL_ROWS)
def test_bad_input_from_a_real_shell_is_one_line(name, env):
  import subprocess
  import sys
  row = next(r for r in ROWS if r[0] == name)
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run([sys.executable, "-m", "scone_jax.cli", *row[1](env)], capture_output=True, text=True,
                        timeout=300, env={k: v for k, v in {**os.environ, "PYTHONPATH": repo}.items()
                                          if k not in ("XLA_FLAGS",)}, cwd=repo)
  err = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(err) == 1 and row[2] in err[0], (name, proc.returncode, err)


@pytest.mark.slow
@pytest.mark.parametrize("command", ["store-verify", "generate"])
def test_unreachable_bucket_from_a_real_shell_is_one_line(command, env, tmp_path):
  """A gs:// store with no credentials and no answer: tensorstore's native auth log line stays off
  the screen, the one line says why, and the wait is bounded (SCONE_JAX_REMOTE_TIMEOUT)."""
  import subprocess
  import sys
  import time
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  port = free_port()   # nothing listens there: GCS and the metadata server are both unreachable
  argv = (["store", "verify", "gs://bucket/store"] if command == "store-verify" else
          ["generate", "--workdir", env["scone_run"], "--store", "gs://bucket/store", "--tier", "remote", "--prompt", "x"])
  environ = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "GOOGLE_APPLICATION_CREDENTIALS")}
  environ.update(PYTHONPATH=repo, HOME=str(tmp_path), SCONE_JAX_REMOTE_TIMEOUT="10",
                 TENSORSTORE_GCS_HTTP_URL=f"http://127.0.0.1:{port}", GCE_METADATA_ROOT=f"127.0.0.1:{port}")
  t0 = time.monotonic()
  proc = subprocess.run([sys.executable, "-m", "scone_jax.cli", *argv], capture_output=True, text=True, timeout=120,
                        env=environ, cwd=repo)
  err = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(err) == 1, (proc.returncode, err)
  assert "did not answer within 10 s" in err[0] and "no Google Cloud credentials were found" in err[0], err
  assert time.monotonic() - t0 < 60
