"""`scone-jax export`: the store holds A_f of every f-gram (each computed alone as the reference,
and by the plain-numpy A_f of tests/reference.py for several block and batch sizes), in every dtype;
zarr-python 3 opens every store without a warning, finds the manifest in the group attributes
and its documented recipe (docs/METHODS.md 1.5) gives the RAM tier's rows bit for bit; an
interrupted export is incomplete, resumes and equals an uninterrupted one; the in-memory kvstore
works; 2 processes write the same store as 1; stores of another checkpoint or f-gram file, of the
old format, or without a manifest, are refused."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorstore as ts
import zarr

from scone_jax.cli import main
from scone_jax.errors import UserError
from scone_jax.export import layout as L
from scone_jax.export.manifest import identity_of
from scone_jax.export.writer import AfRows, export_table
from scone_jax.serve.store import open_store
from scone_jax.train.restore import load_run, params_sha256
from tests.helpers import TINY_FGRAMS, TINY_ROWS_PER_SHARD, TINY_STEPS, fault_rng, free_port, run_all
from tests.reference import np_fgram_embedding, np_params

ROWS_PER_SHARD = TINY_ROWS_PER_SHARD   # 150 f-grams: 3 blocks, the last one partial


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_scone_run):
  """The suite's tiny SCONE run (conftest.py: 4 steps on the (2, 2, 2) mesh, 150 f-grams, K = 3)
  and its float32 store (read-only); this module writes its stores under `tmp`."""
  assert TINY_FGRAMS == 150 and TINY_STEPS == 4
  workdir = tiny_scone_run["workdir"]
  return {"tmp": tmp_path_factory.mktemp("export"), "workdir": workdir, "store": tiny_scone_run["store"],
          "loaded": load_run(workdir)}


def _read(url: str, name: str) -> np.ndarray:
  """An array as stored (bfloat16 rows as their uint16 bits)."""
  return ts.open(L.array_spec(url, name), context=L.shared_context()).result().read().result()


def _manifest(url: str) -> dict:
  with open(os.path.join(url, "zarr.json")) as f:
    return json.load(f)["attributes"][L.MANIFEST_ATTR]


def _zarr_rows(group, dtype: str) -> np.ndarray:
  """docs/METHODS.md 1.5's zarr-python recipe: every row of a store as float numbers."""
  import ml_dtypes
  emb = np.asarray(group["embeddings"][:])
  if dtype == "bfloat16":
    assert group["embeddings"].attrs["scone_jax_dtype"] == "bfloat16" and emb.dtype == np.uint16
    return emb.view(ml_dtypes.bfloat16)
  if dtype == "int8":
    return np.asarray(group["scales"][:])[:, None] * emb.astype(np.float32)
  return emb


def _zarr_open_strict(url: str):
  """zarr-python 3 opens the store and lists every member, at every depth, with warnings as errors;
  returns (group, its attributes)."""
  import warnings
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    group = zarr.open_group(url, mode="r")
    names = {name for name, _ in group.members(max_depth=None)}
    attrs = dict(group.attrs)
  assert {"embeddings", "fgram_tokens", "progress"} <= names, names
  return group, attrs


def _reference_table(loaded) -> np.ndarray:
  """A_f of each f-gram on its own, unpadded: [S, d] float32."""
  model = loaded.trainer.model(jax.device_get(loaded.params))
  fn = jax.jit(lambda toks: model.input_embedding.fgram_embeddings(model, toks, jnp.array([toks.shape[1]])))
  return np.stack([np.asarray(fn(np.array([g], np.int32)))[0] for g in loaded.exp.method.fgram_vocab.as_tuples()])


@pytest.fixture(scope="module")
def numpy_table(run) -> np.ndarray:
  """A_f of each f-gram in float64 numpy from the checkpoint's parameters (tests/reference.py):
  [S, d], row r = f-gram r."""
  loaded = run["loaded"]
  params = np_params(jax.device_get(loaded.params))
  return np.stack([np_fgram_embedding(params, loaded.exp.model, g) for g in loaded.exp.method.fgram_vocab.as_tuples()])


def test_export_holds_af_of_every_fgram_and_zarr_reads_it(run, numpy_table):
  loaded = run["loaded"]
  vocab = loaded.exp.method.fgram_vocab
  table = _read(run["store"], "embeddings")
  np.testing.assert_allclose(table, _reference_table(loaded), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(table, numpy_table, rtol=1e-4, atol=1e-5)
  tokens = _read(run["store"], "fgram_tokens")
  assert [tuple(int(t) for t in row if t >= 0) for row in tokens] == vocab.as_tuples()
  group, attrs = _zarr_open_strict(run["store"])
  np.testing.assert_array_equal(group["embeddings"][:], table)
  np.testing.assert_array_equal(group["fgram_tokens"][:], tokens)
  manifest = attrs[L.MANIFEST_ATTR]
  assert attrs[L.MANIFEST_SHA_ATTR] == L.manifest_sha256(manifest) and manifest == _manifest(run["store"])
  assert (manifest["dtype"], manifest["num_rows"], manifest["dim"], manifest["max_n"]) == ("float32", 150, 32, 3)
  assert manifest["fgrams_sha256"] == vocab.meta.parquet_sha256
  assert manifest["checkpoint_sha256"] == params_sha256(loaded.params) and manifest["checkpoint_step"] == 4
  assert manifest["arrays"]["embeddings"] == L.array_sha256(table, ROWS_PER_SHARD)
  assert sorted(os.listdir(os.path.join(run["store"], "embeddings", "c"))) == ["0", "1", "2"]   # one shard a block
  assert open_store(run["store"], "ram", expected=identity_of(loaded)).layout.num_rows == 150


@pytest.mark.parametrize("rows_per_shard, batch_rows", [(64, 16), (64, 32), (32, 32)])
def test_every_block_and_batch_size_stores_numpy_af_row_by_row(run, numpy_table, rows_per_shard, batch_rows):
  """`scone-jax export --rows_per_shard R --batch_rows B` (A_f in R/B calls per block, the last
  block partial): row r of the store is the numpy A_f of f-gram r."""
  url = str(run["tmp"] / f"store_r{rows_per_shard}_b{batch_rows}")
  assert main(["export", "--dtype", "float32", "--workdir", run["workdir"], "--out", url, "--rows_per_shard", str(rows_per_shard),
               "--batch_rows", str(batch_rows)]) == 0
  table = _read(url, "embeddings")
  assert table.shape == numpy_table.shape == (TINY_FGRAMS, 32)
  for lo in range(0, TINY_FGRAMS, batch_rows):   # one batch_rows piece at a time: a misplaced piece is named
    np.testing.assert_allclose(table[lo:lo + batch_rows], numpy_table[lo:lo + batch_rows], rtol=1e-4, atol=1e-5,
                               err_msg=f"rows {lo}..{lo + batch_rows - 1} (block {lo // rows_per_shard})")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "int8"])
def test_every_dtype_is_the_float32_table_converted(run, dtype):
  loaded = run["loaded"]
  url = str(run["tmp"] / f"store_{dtype}")
  tokens, lengths = loaded.exp.method.fgram_vocab.token_matrix()
  lay = L.Layout(150, 32, 3, dtype, ROWS_PER_SHARD, L.inner_rows_for(32, dtype, ROWS_PER_SHARD))
  assert export_table(url, lay, tokens, lengths, AfRows(loaded.trainer, loaded.params, dtype), identity_of(loaded))["complete"]
  full = _read(run["store"], "embeddings")
  stored = L.as_rows(_read(url, "embeddings"), dtype)
  group, attrs = _zarr_open_strict(url)
  assert attrs[L.MANIFEST_ATTR]["dtype"] == dtype and attrs[L.MANIFEST_ATTR] == _manifest(url)
  np.testing.assert_array_equal(group["embeddings"][:].view(np.uint8), stored.view(np.uint8))
  ram = open_store(url, "ram", expected=identity_of(loaded)).rows(np.arange(150))
  recipe = _zarr_rows(group, dtype)
  assert recipe.dtype == ram.dtype
  np.testing.assert_array_equal(recipe.view(np.uint8), ram.view(np.uint8))   # bit for bit
  rows = open_store(url, "disk", expected=identity_of(loaded)).fetch(np.array([0, 7, 149])).result()
  np.testing.assert_array_equal(rows.view(np.uint8), ram[[0, 7, 149]].view(np.uint8))
  if dtype == "int8":
    scales = _read(url, "scales")
    np.testing.assert_array_equal(group["scales"][:], scales)
    np.testing.assert_allclose(scales, np.abs(full).max(axis=1) / 127, rtol=1e-6)
    assert np.all(np.abs(stored.astype(np.float32) * scales[:, None] - full) <= scales[:, None] * 0.5 + 1e-6)
    np.testing.assert_allclose(rows, stored[[0, 7, 149]].astype(np.float32) * scales[[0, 7, 149], None], rtol=1e-6)
  else:
    assert stored.dtype == L.numpy_dtype(dtype)
    # Rounding to nearest: half a unit in the last place, relative; float16 values below 2^-14 are
    # subnormal, where the spacing is a fixed 2^-24 (bfloat16 has float32's exponent range).
    np.testing.assert_allclose(stored.astype(np.float32), full, rtol=2.0 ** -(8 if dtype == "bfloat16" else 11),
                               atol=2.0 ** -25 if dtype == "float16" else 0)
    np.testing.assert_array_equal(rows.view(np.uint8), stored[[0, 7, 149]].view(np.uint8))


def test_memory_and_file_url_kvstores(run):
  loaded = run["loaded"]
  url = "memory://test_export/store/"
  assert main(["export", "--dtype", "float32", "--workdir", run["workdir"], "--out", url, "--rows_per_shard", str(ROWS_PER_SHARD)]) == 0
  want = _read(run["store"], "embeddings")
  for tier, where in (("ram", url), ("remote", url), ("remote", "file://" + run["store"])):
    store = open_store(where, tier, expected=identity_of(loaded))
    np.testing.assert_array_equal(store.fetch(np.arange(150)).result(), want)


def test_interrupted_export_is_incomplete_then_resumes(run, capsys):
  loaded = run["loaded"]
  url = str(run["tmp"] / "store_resumed")
  cmd = ["export", "--dtype", "float32", "--workdir", run["workdir"], "--out", url, "--rows_per_shard", str(ROWS_PER_SHARD)]
  assert main(cmd + ["--stop_after_blocks", "1"]) == 0
  assert "incomplete" in capsys.readouterr().out
  assert L.MANIFEST_ATTR not in json.load(open(os.path.join(url, "zarr.json")))["attributes"]
  assert sorted(os.listdir(os.path.join(url, "progress"))) == ["block-00000000", "zarr.json"]   # config + one block
  _zarr_open_strict(url)   # an unfinished store is a clean zarr hierarchy too
  with pytest.raises(UserError, match="no manifest.json or scone_jax_manifest attribute"):
    open_store(url, "disk", expected=identity_of(loaded))
  assert main(cmd[:-2] + ["--rows_per_shard", "128"]) == 2   # other settings: refused, not mixed
  assert "--restart" in capsys.readouterr().err
  assert main(cmd) == 0
  assert "2 blocks written, 1 resumed" in capsys.readouterr().out
  for name in ("embeddings", "fgram_tokens"):
    np.testing.assert_array_equal(_read(url, name), _read(run["store"], name))
  assert _manifest(url) == _manifest(run["store"])
  assert main(cmd) == 0
  assert "already a complete export" in capsys.readouterr().out
  assert main(cmd + ["--dtype", "float16"]) == 2   # a finished store of other settings needs --restart
  assert main(cmd + ["--dtype", "float16", "--restart"]) == 0
  assert "3 blocks written, 0 resumed" in capsys.readouterr().out
  assert _read(url, "embeddings").dtype == np.float16


def test_stores_of_another_checkpoint_or_fgram_file_are_refused(run, capsys):
  loaded = run["loaded"]
  url = str(run["tmp"] / "store_step2")
  assert main(["export", "--dtype", "float32", "--workdir", run["workdir"], "--out", url, "--step", "2"]) == 0
  assert main(["eval", "--workdir", run["workdir"], "--store", url, "--format", "json"]) == 2
  assert "another checkpoint" in capsys.readouterr().err
  other_fgrams = dataclasses.replace(identity_of(loaded), fgrams_sha256="0" * 64)
  with pytest.raises(UserError, match="another fgrams.parquet"):
    open_store(run["store"], "ram", expected=other_fgrams)
  foreign = run["tmp"] / "not_a_store"
  foreign.mkdir()
  (foreign / "notes.txt").write_text("mine")
  assert main(["export", "--dtype", "float32", "--workdir", run["workdir"], "--out", str(foreign), "--restart"]) == 2
  assert (foreign / "notes.txt").exists()


def test_a_store_of_the_old_format_is_refused_until_restarted(run, capsys):
  """Store format v1 kept its manifest in manifest.json (zarr-python warns about it): readers and
  export name the format in one line; `export --restart` rewrites it in the current one."""
  import shutil
  url = str(run["tmp"] / "store_v1")
  shutil.copytree(run["store"], url)
  with open(os.path.join(url, "manifest.json"), "w") as f:
    json.dump({**_manifest(url), "version": 1}, f)
  with open(os.path.join(url, "zarr.json"), "w") as f:
    json.dump(L.group_json({}), f)
  shutil.rmtree(os.path.join(url, "progress"))
  os.mkdir(os.path.join(url, "progress"))
  with open(os.path.join(url, "progress", "config.json"), "w") as f:
    json.dump({}, f)
  with pytest.raises(UserError, match="old store format v1"):
    open_store(url, "disk", expected=identity_of(run["loaded"]))
  cmd = ["export", "--dtype", "float32", "--workdir", run["workdir"], "--out", url, "--rows_per_shard", str(ROWS_PER_SHARD)]
  capsys.readouterr()
  assert main(cmd) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "old store format v1" in err[0] and "--restart" in err[0], err
  assert main(cmd + ["--restart"]) == 0
  assert not os.path.exists(os.path.join(url, "manifest.json"))
  _zarr_open_strict(url)
  assert _manifest(url) == _manifest(run["store"])


@pytest.mark.slow
def test_two_processes_write_the_store_one_process_writes(run):
  """2 processes x 4 CPU devices on the run's (data 2, fsdp 2, tensor 2) mesh, each writing its
  own blocks, produce the single-process store."""
  url = str(run["tmp"] / "store_2proc")
  port = free_port()
  cmd = [sys.executable, "-m", "scone_jax.cli", "export", "--dtype", "float32", "--workdir", run["workdir"], "--out", url,
         "--rows_per_shard", str(ROWS_PER_SHARD), "--coordinator_address", f"127.0.0.1:{port}", "--num_processes", "2"]
  run_all([(cmd + ["--process_id", str(i)], 4, str(run["tmp"] / f"export_{i}.log")) for i in range(2)])
  got, want = _manifest(url), _manifest(run["store"])
  assert got["checkpoint_sha256"] == want["checkpoint_sha256"]
  np.testing.assert_allclose(_read(url, "embeddings"), _read(run["store"], "embeddings"), rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(_read(url, "fgram_tokens"), _read(run["store"], "fgram_tokens"))
  markers = [json.loads((run["tmp"] / "store_2proc" / "progress" / f / "zarr.json").read_text())["attributes"]["scone_jax_block"]
             for f in sorted(os.listdir(os.path.join(url, "progress"))) if f.startswith("block-")]
  assert [m["rows"] for m in markers] == [[0, 64], [64, 128], [128, 150]]
  assert [m["process"] for m in markers] == [0, 1, 0]   # pending blocks dealt round-robin


@pytest.mark.slow
def test_sigkill_during_export_then_rerun_completes(run):
  """A real process killed at a random moment of `export`: no manifest unless it finished, and a
  rerun of the same command completes a store identical to an uninterrupted one."""
  import signal
  import time
  url = str(run["tmp"] / "store_killed")
  cmd = [sys.executable, "-m", "scone_jax.cli", "export", "--dtype", "float32", "--workdir", run["workdir"], "--out", url,
         "--rows_per_shard", "16"]
  env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
  rng, seed = fault_rng("sigkill during export")
  delays = sorted(float(d) for d in rng.uniform(2.0, 12.0, size=2))
  print(f"killing after {delays} s")
  for delay in delays:
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    if not os.path.exists(os.path.join(url, "zarr.json")) or L.MANIFEST_ATTR not in json.load(
        open(os.path.join(url, "zarr.json")))["attributes"]:
      with pytest.raises(UserError):
        open_store(url, "disk", expected=identity_of(run["loaded"]))
  assert subprocess.run(cmd, env=env, capture_output=True, timeout=300).returncode == 0, (seed, delays)
  np.testing.assert_array_equal(_read(url, "embeddings"), _read(run["store"], "embeddings"), err_msg=f"{seed}, {delays}")
  np.testing.assert_array_equal(_read(url, "fgram_tokens"), _read(run["store"], "fgram_tokens"), err_msg=f"{seed}, {delays}")


def test_corrupted_chunk_is_detected_not_decoded(run, capsys):
  """One flipped byte in a shard file: the chunk's crc32c fails, so the RAM tier refuses the store
  when it loads it and the disk tier refuses the read; neither decodes it."""
  import shutil
  url = str(run["tmp"] / "store_corrupt")
  shutil.copytree(run["store"], url)
  shard_dir = os.path.join(url, "embeddings", "c")
  shard = max((os.path.join(d, f) for d, _, fs in os.walk(shard_dir) for f in fs), key=os.path.getsize)
  raw = bytearray(open(shard, "rb").read())
  raw[100] ^= 0x40
  open(shard, "wb").write(bytes(raw))
  expected = identity_of(run["loaded"])
  with pytest.raises(UserError, match="corrupted"):
    open_store(url, "ram", expected=expected)
  store = open_store(url, "disk", expected=expected)
  with pytest.raises(UserError, match="corrupted"):
    for lo in range(0, store.layout.num_rows, 16):
      store.fetch(np.arange(lo, min(lo + 16, store.layout.num_rows))).result()


def test_the_default_dtype_is_float16_the_float32_table_rounded(run):
  """`export` without --dtype: float16 rows (what zarr-python, numpy and safetensors read natively),
  each the float32 table's value rounded to nearest."""
  url = str(run["tmp"] / "store_default")
  assert main(["export", "--workdir", run["workdir"], "--out", url, "--rows_per_shard", str(ROWS_PER_SHARD)]) == 0
  assert _manifest(url)["dtype"] == "float16"
  stored = L.as_rows(_read(url, "embeddings"), "float16")
  np.testing.assert_array_equal(stored.view(np.uint16), _read(run["store"], "embeddings").astype(np.float16).view(np.uint16))
