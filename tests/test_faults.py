"""Fault injection with real processes and real signals: SIGKILL mid-step and mid-checkpoint,
SIGTERM preemption, non-finite loss, SIGKILL and Ctrl-C during `fgrams build`."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from scone_jax import experiment
from scone_jax.cli import main
from scone_jax.config import MeshConfig
from scone_jax.fgram import vocab as fgram_vocab
from scone_jax.train import metrics
from scone_jax.train.checkpoint import Checkpoints
from scone_jax.train.restore import load_run
from tests.helpers import fault_rng, make_data, tiny_bindings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train_cmd(data, workdir, steps, **extra):
  flags = [f"--gin.{b.replace(' = ', '=')}" for b in tiny_bindings(data, steps, **extra)]
  return [sys.executable, "-m", "scone_jax.cli", "train", "--gin_file", "models/tiny.gin", "--gin_file", "runs/cpu_mesh8.gin", *flags,
          "--workdir", workdir]


def _env():
  env = dict(os.environ)
  env["XLA_FLAGS"] = os.environ["XLA_FLAGS"]   # 8 fake devices (conftest)
  env["PYTHONPATH"] = ROOT
  return env


def _losses(workdir) -> list[tuple[int, float]]:
  if not os.path.exists(os.path.join(workdir, metrics.METRICS_FILE)):
    return []
  return [(r["step"], r["loss"]) for r in metrics.read(workdir, "train")]


def _wait_for_step(proc, workdir, step, timeout=240):
  t0 = time.time()
  while time.time() - t0 < timeout:
    if any(s >= step for s, _ in _losses(workdir)):
      return
    if proc.poll() is not None:
      raise AssertionError(f"training exited early with {proc.returncode}")
    time.sleep(0.02)
  proc.kill()
  raise AssertionError("timed out waiting for training")


def _params(workdir):
  loaded = load_run(workdir, mesh_config=MeshConfig(2, 2, 2))
  return [np.asarray(x) for x in jax.tree.leaves(loaded.params)]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return make_data(str(tmp_path_factory.mktemp("data")))[0]


@pytest.mark.slow
def test_sigkill_anywhere_then_resume_is_bit_identical(data_dir, tmp_path):
  steps, extra = 12, {"TrainConfig.checkpoint_every": 3}
  ref = str(tmp_path / "ref")
  subprocess.run(_train_cmd(data_dir, ref, steps, **extra), env=_env(), check=True, cwd=ROOT,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
  reference = dict(_losses(ref))
  assert sorted(reference) == list(range(1, steps + 1))
  run = str(tmp_path / "killed")
  rng, seed = fault_rng("sigkill then resume")
  kills = sorted(int(k) for k in rng.choice([3, 4, 6, 7, 9], size=2, replace=False))   # on and between checkpoint steps
  print(f"killing after steps {kills}")
  for k in kills:
    proc = subprocess.Popen(_train_cmd(data_dir, run, steps, **extra), env=_env(), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_step(proc, run, k)
    proc.send_signal(signal.SIGKILL)   # while the next step runs / the async checkpoint writes
    proc.wait(timeout=30)
  subprocess.run(_train_cmd(data_dir, run, steps, **extra), env=_env(), check=True, cwd=ROOT,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
  seen = _losses(run)
  assert {s for s, _ in seen} == set(reference), (seed, kills)
  for s, loss in seen:        # every step, first try or recomputed after a kill, is identical
    assert loss == reference[s], (seed, s, kills)
  for a, b in zip(_params(ref), _params(run)):
    np.testing.assert_array_equal(a, b, err_msg=f"{seed}, kills after steps {kills}")


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_cleanly(data_dir, tmp_path):
  run = str(tmp_path / "run")
  proc = subprocess.Popen(_train_cmd(data_dir, run, 100000, **{"TrainConfig.checkpoint_every": 100000}),
                          env=_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  _wait_for_step(proc, run, 3)
  proc.send_signal(signal.SIGTERM)
  t0 = time.time()
  out, _ = proc.communicate(timeout=60)
  assert proc.returncode == 0, out[-2000:]
  assert time.time() - t0 < 60
  assert "SIGTERM: saved step" in out
  ckpt_steps = sorted(int(d) for d in os.listdir(os.path.join(run, "checkpoints")) if d.isdigit())
  assert ckpt_steps and ckpt_steps[-1] >= 3


def test_unfinished_checkpoint_is_never_restored(data_dir, tmp_path):
  run = str(tmp_path / "run")
  exp = experiment.load(["models/tiny.gin", "runs/cpu_mesh8.gin"], tiny_bindings(data_dir, 6, **{"TrainConfig.checkpoint_every": 3}))
  from scone_jax.train import loop
  loop.train(exp, run, quiet=True)
  # A write cut off at step 9: orbax's temporary directory, with a truncated copy of step 6.
  import shutil
  tmp = os.path.join(run, "checkpoints", "9.orbax-checkpoint-tmp-1234567")
  shutil.copytree(os.path.join(run, "checkpoints", "6"), tmp)
  for root, _, files in os.walk(tmp):
    for f in files:
      open(os.path.join(root, f), "wb").close()
  ckpt = Checkpoints(run, exp.train, read_only=True)
  assert ckpt.latest_step() == 6
  ckpt.close()


def test_nonfinite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(data_dir, tmp_path, capsys):
  run = str(tmp_path / "run")
  argv = ["train", "--gin_file", "models/tiny.gin", "--gin_file", "runs/cpu_mesh8.gin", *[f"--gin.{b.replace(' = ', '=')}" for b in tiny_bindings(
      data_dir, 20, **{"TrainConfig.checkpoint_every": 1, "TrainConfig.warmup_steps": 1,
                       "TrainConfig.learning_rate": 1e30, "TrainConfig.grad_clip": 0.0})], "--workdir", run]
  assert main(argv) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "non-finite loss" in err[0] and "at step" in err[0], err
  good = Checkpoints(run, experiment.load([f"{run}/config.gin"], []).train, read_only=True)
  last = good.latest_step()
  good.close()
  assert f"(step {last})" in err[0]
  for x in _params(run):
    assert np.isfinite(x).all()


def _build_argv(data, out, scratch):
  return [sys.executable, "-m", "scone_jax.cli", "fgrams", "build", "--data", data, "--max_n", "4", "--size", "5000",
          "--min_count", "2", "--chunk_tokens", "20000", "--tmp_dir", scratch, "--out", out]


@pytest.fixture(scope="module")
def build_case(tmp_path_factory):
  """A corpus of ~4M tokens (200 chunks), its f-grams built once uninterrupted, and how long that
  build took as a process: the faults below land at fractions of it, whatever this machine's speed."""
  root = tmp_path_factory.mktemp("build_faults")
  data, _ = make_data(str(root / "d"), vocab=500, docs=20000, max_len=400)
  (root / "scratch").mkdir()
  t0 = time.monotonic()
  subprocess.run(_build_argv(data, str(root / "ref"), str(root / "scratch")), env=_env(), cwd=ROOT, check=True,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  return {"data": data, "ref": fgram_vocab.load(str(root / "ref")), "seconds": time.monotonic() - t0}


FRACTIONS = (0.5, 0.65, 0.8, 0.9, 0.97)   # the process's start (imports) takes about the first half


@pytest.mark.slow
def test_sigkill_during_fgrams_build_leaves_nothing_that_looks_complete(build_case, tmp_path):
  data, ref = build_case["data"], build_case["ref"]
  out, scratch = str(tmp_path / "fg"), str(tmp_path / "scratch")
  os.makedirs(scratch)
  for fraction in FRACTIONS:
    proc = subprocess.Popen(_build_argv(data, out, scratch), env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    time.sleep(fraction * build_case["seconds"])
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    if os.path.exists(out):   # finished before the kill: then it must be complete and correct
      got = fgram_vocab.load(out)
      assert got.as_tuples() == ref.as_tuples()
      shutil.rmtree(out)
  assert main(["fgrams", "build", "--data", data, "--max_n", "4", "--size", "5000", "--min_count", "2", "--out", out]) == 0
  got = fgram_vocab.load(out)
  assert got.as_tuples() == ref.as_tuples() and list(got.counts) == list(ref.counts)


@pytest.mark.slow
def test_ctrl_c_during_fgrams_build_is_one_line_and_leaves_nothing(build_case, tmp_path):
  """SIGINT (Ctrl-C) at several moments of a build (reading, counting passes, ranking, saving):
  exit 130 within seconds, one line saying "interrupted", no scratch files left in --tmp_dir, and
  the output either absent or complete. At least one signal must land mid-build."""
  data, ref = build_case["data"], build_case["ref"]
  scratch = tmp_path / "scratch"
  scratch.mkdir()
  interrupted = 0
  for i, fraction in enumerate(FRACTIONS):
    out = str(tmp_path / f"fg{i}")
    proc = subprocess.Popen(_build_argv(data, out, str(scratch)), env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(fraction * build_case["seconds"])
    proc.send_signal(signal.SIGINT)
    t0 = time.monotonic()
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - t0 < 10, fraction
    lines = [line for line in err.splitlines() if line.strip()]
    if proc.returncode == 0 or (proc.returncode == -signal.SIGINT and os.path.exists(out)):
      # finished before the signal (or the signal came during interpreter exit, which resets the
      # handler): then the output is complete and correct
      assert fgram_vocab.load(out).as_tuples() == ref.as_tuples()
    else:
      interrupted += 1
      assert proc.returncode == 130 and len(lines) == 1 and "interrupted" in lines[0], (fraction, proc.returncode, err)
      assert not os.path.exists(out), (fraction, os.listdir(out))
    assert os.listdir(scratch) == [], (fraction, os.listdir(scratch))
  assert interrupted >= 2, "every signal came after the build had finished: make the corpus larger"


def test_corrupted_checkpoint_is_detected_not_decoded(data_dir, tmp_path, capsys):
  run = str(tmp_path / "run")
  flags = [f"--gin.{b.replace(' = ', '=')}" for b in tiny_bindings(data_dir, 4, **{"TrainConfig.checkpoint_every": 2})]
  assert main(["train", "--gin_file", "models/tiny.gin", "--gin_file", "runs/cpu_mesh8.gin", *flags, "--workdir", run, "--quiet"]) == 0
  hashes = json.load(open(os.path.join(run, "checkpoint_hashes", "4.json")))
  assert sorted(os.listdir(os.path.join(run, "checkpoint_hashes"))) == ["2.json", "4.json"]
  # Flip one byte in the largest file of the newest checkpoint.
  step_dir = os.path.join(run, "checkpoints", "4")
  victim = max(hashes, key=lambda n: os.path.getsize(os.path.join(step_dir, n)))
  raw = bytearray(open(os.path.join(step_dir, victim), "rb").read())
  raw[len(raw) // 2] ^= 0x01
  open(os.path.join(step_dir, victim), "wb").write(bytes(raw))
  capsys.readouterr()
  assert main(["eval", "--workdir", run]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "corrupted" in err[0] and victim in err[0], err
  assert main(["train", "--gin_file", "models/tiny.gin", "--gin_file", "runs/cpu_mesh8.gin", *flags[:-0 or None], "--gin.TRAIN_STEPS=6",
               "--workdir", run, "--quiet"]) == 2
