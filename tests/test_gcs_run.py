"""RUN on gs://, against a GCS emulator on loopback (tests/gcs_emulator.py): a tiny training with
--workdir gs://BUCKET/run stops, resumes and ends with the losses and bit-identical parameters
of the same walk on a local RUN; nothing named gs: appears locally; the sweep collector reads
gs:// runs; a missing bucket, a missing gcsfs and a held lease are one-line errors. Every test
runs with connections outside loopback refused, and asserts none was tried."""
from __future__ import annotations

import json
import os
import sys
import time

import jax
import numpy as np
import pytest

from scone_jax import paths
from scone_jax.cli import main
from scone_jax.commands import sweep_results
from scone_jax.config import MeshConfig
from scone_jax.errors import UserError
from scone_jax.train import identity
from scone_jax.train.restore import load_run
from tests.gcs_emulator import emulator_env, loopback_only, start_emulator
from tests.helpers import make_data, read_metrics, tiny_bindings

# Every test here starts the emulator and most train: in `make test`, not in `make test-fast`.
pytestmark = pytest.mark.slow

STEPS, EVERY, STOP = 6, 2, 3


@pytest.fixture(scope="module")
def emulator():
  em = start_emulator()
  with pytest.MonkeyPatch.context() as mp:
    for k, v in emulator_env(em).items():
      mp.setenv(k, v)
    try:
      yield em
    finally:
      em.stop()


@pytest.fixture(autouse=True)
def _loopback(emulator):
  with loopback_only() as refused:
    yield
  assert refused == [], f"connections outside loopback were tried: {refused}"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return make_data(str(tmp_path_factory.mktemp("data")))[0]


def _train(data, workdir, *extra_flags):
  flags = [f"--gin.{b.replace(' = ', '=')}" for b in tiny_bindings(data, STEPS, **{"TrainConfig.checkpoint_every": EVERY})]
  return main(["train", "--gin_file", "models/tiny.gin", "--gin_file", "runs/cpu_mesh8.gin", *flags, "--quiet",
               "--workdir", workdir, *extra_flags])


def _params(workdir):
  return [np.asarray(x) for x in jax.tree.leaves(load_run(workdir, mesh_config=MeshConfig(2, 2, 2)).params)]


def _no_local_gs(*roots):
  for root in roots:
    for dirpath, dirnames, filenames in os.walk(root):
      named = [n for n in dirnames + filenames if n.startswith("gs:") or n == "gs"]
      assert not named, f"a gs:// path made local files: {os.path.join(dirpath, named[0])}"


@pytest.mark.slow
def test_train_on_gcs_resumes_like_local(emulator, data_dir, tmp_path, tmp_path_factory, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)   # a relative gs:/... directory would appear here
  local = str(tmp_path / "local")
  assert _train(data_dir, local) == 0
  remote = f"gs://{emulator.bucket}/runs/x"
  assert _train(data_dir, remote, "--stop_after_steps", str(STOP)) == 0
  assert sorted(read_metrics(remote)) == list(range(1, STOP + 1))
  assert not paths.exists(paths.join(remote, "summary.json"))
  assert _train(data_dir, remote) == 0
  capsys.readouterr()

  want, got = read_metrics(local), read_metrics(remote)
  assert sorted(got) == list(range(1, STEPS + 1))
  assert [got[s]["loss"] for s in sorted(got)] == [want[s]["loss"] for s in sorted(want)]
  for a, b in zip(_params(local), _params(remote), strict=True):
    np.testing.assert_array_equal(a, b)

  names = paths.listdir(remote)
  for name in ("config.gin", "identity.json", "metrics.jsonl", "summary.json", "checkpoints", "tensorboard"):
    assert name in names, names
  assert ".lock" not in names   # the lease ends with the run
  assert len(paths.listdir(paths.join(remote, "tensorboard"))) == 2   # one event file per invocation
  summary = json.loads(paths.read_text(paths.join(remote, "summary.json")))
  assert summary["step"] == STEPS and summary["eval_loss"] == json.loads(paths.read_text(os.path.join(local, "summary.json")))["eval_loss"]
  _no_local_gs(str(tmp_path), str(tmp_path_factory.getbasetemp()))
  assert not [n for n in os.listdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))) if n.startswith("gs:")]

  # the sweep collector reads gs:// runs: done, failed (config.gin, no summary.json), missing
  failed = f"gs://{emulator.bucket}/runs/failed"
  paths.atomic_write_text(paths.join(failed, "config.gin"), paths.read_text(paths.join(remote, "config.gin")))
  runs = sweep_results.read_runs([remote, failed, f"gs://{emulator.bucket}/runs/never"])
  assert [r.status for r in runs] == ["done", "failed", "missing"]
  assert runs[0].summary["eval_perplexity"] == summary["eval_perplexity"]
  assert runs[0].coords["steps"] == STEPS and runs[1].coords == runs[0].coords


def test_missing_bucket_is_one_line(emulator, data_dir, tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  assert _train(data_dir, "gs://no-such-bucket/run") == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and "bucket gs://no-such-bucket does not exist" in err, err
  with pytest.raises(UserError, match="does not exist"):
    load_run("gs://no-such-bucket/run")
  assert os.listdir(tmp_path) == []


def test_gs_without_gcsfs_names_the_extra(monkeypatch):
  monkeypatch.setitem(sys.modules, "gcsfs", None)   # import gcsfs -> ImportError
  with pytest.raises(UserError, match=r"scone_jax\[gcs\]"):
    paths.exists("gs://bucket/run/config.gin")


def test_paths_on_a_bucket(emulator, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  base = f"gs://{emulator.bucket}/paths"
  paths.makedirs(paths.join(base, "a"))   # nothing: no directories on a bucket, none locally
  assert not paths.exists(paths.join(base, "a"))
  paths.atomic_write_text(paths.join(base, "a", "x.json"), "{}")
  paths.append_text(paths.join(base, "log.jsonl"), "1\n")
  paths.append_text(paths.join(base, "log.jsonl"), "2\n")
  assert paths.read_text(paths.join(base, "log.jsonl")) == "1\n2\n"
  assert paths.isdir(paths.join(base, "a")) and paths.isfile(paths.join(base, "a", "x.json"))
  assert paths.listdir(base) == ["a", "log.jsonl"] and paths.list_dirs(base) == ["a"]
  assert paths.glob(base, "*.jsonl") == [paths.join(base, "log.jsonl")]
  paths.rmtree(base)
  assert not paths.exists(paths.join(base, "log.jsonl")) and paths.listdir(base) == []
  assert os.listdir(tmp_path) == []


def test_lease_on_a_bucket(emulator):
  run = f"gs://{emulator.bucket}/leased"
  lock = paths.join(run, identity.LOCK)
  held = {"holder": "another-host:1", "token": "t", "expires": time.time() + 60}
  paths.atomic_write_text(lock, json.dumps(held))
  with pytest.raises(UserError, match="in use by another process"):
    with identity.run_lock(run):
      pass
  with pytest.raises(UserError, match="in use by another process"):
    with identity.run_lock(run, shared=True):
      pass
  with pytest.raises(FileExistsError):   # a create-only write (ifGenerationMatch=0): two racers, one lease
    identity._write_lease(lock, "me:1", "u", create=True)
  paths.atomic_write_text(lock, json.dumps({**held, "expires": time.time() - 1}))   # its lease is over
  with identity.run_lock(run):
    mine = json.loads(paths.read_text(lock))
    assert mine["holder"].endswith(f":{os.getpid()}") and mine["expires"] > time.time()
  assert not paths.exists(lock)


def test_the_guard_refuses_outside_loopback():
  import socket
  with loopback_only() as refused:
    with pytest.raises(ConnectionRefusedError):
      socket.create_connection(("192.0.2.1", 80), timeout=1)   # TEST-NET-1: never reached
  assert refused == [("192.0.2.1", 80)]
