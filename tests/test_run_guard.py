"""A run has an identity and one writer: resume, eval, generate and export refuse inputs other than
the ones the run trained on (unless asked on purpose); a second writer is refused at once, and a
lock dies with its process; a refused resume leaves the run as it was."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from scone_jax.cli import main
from scone_jax.fgram.build import build
from scone_jax.files import directory_lock
from tests.helpers import REPO, make_data, tiny_bindings

# Several tiny trainings in-process (about 100 s): slow.
pytestmark = pytest.mark.slow


def _train_argv(data, run, *extra, steps=2, fg=None):
  files = ["models/tiny.gin"] + (["methods/scone.gin"] if fg else []) + ["runs/cpu.gin"]
  binds = tiny_bindings(data, steps) + ([f"FGRAM_DIR = '{fg}'"] if fg else [])
  return ["train", *[w for f in files for w in ("--gin_file", f)], *[f"--gin.{b.replace(' = ', '=')}" for b in binds],
          "--workdir", run, "--quiet", *extra]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  root = tmp_path_factory.mktemp("guard")
  data, _ = make_data(str(root / "data"), docs=80)
  other, _ = make_data(str(root / "other"), docs=80, seed=3)   # same shapes, other tokens
  build(data, str(root / "fg"), max_n=3, size=40, min_count=2)
  run, base = str(root / "run"), str(root / "base")
  assert main(_train_argv(data, run, fg=str(root / "fg"))) == 0
  assert main(_train_argv(data, base)) == 0
  return {"root": root, "data": data, "other": other, "fg": str(root / "fg"), "run": run, "base": base}


def _err(capsys) -> list[str]:
  return capsys.readouterr().err.strip().splitlines()


def test_a_run_records_its_identity(env):
  with open(os.path.join(env["run"], "identity.json")) as f:
    recorded = json.load(f)
  with open(os.path.join(env["fg"], "meta.json")) as f:
    parquet = json.load(f)["parquet_sha256"]
  with open(os.path.join(env["data"], "meta.json")) as f:
    tokenizer = json.load(f)["tokenizer_sha256"]
  assert recorded["fgrams_sha256"] == parquet and recorded["tokenizer_sha256"] == tokenizer
  assert set(recorded) == {"data_fingerprint", "tokenizer_sha256", "fgrams_sha256"}


def test_resume_on_other_data_is_refused_unless_on_purpose(env, tmp_path, capsys):
  run = str(tmp_path / "run")
  shutil.copytree(env["base"], run)
  config = open(os.path.join(run, "config.gin")).read()
  capsys.readouterr()
  assert main(_train_argv(env["other"], run, steps=3)) == 2
  err = _err(capsys)
  assert len(err) == 1 and "was trained on the data" in err[0] and env["other"] in err[0], err
  assert open(os.path.join(run, "config.gin")).read() == config   # nothing rewritten
  assert main(_train_argv(env["other"], run, "--allow_other_data", steps=3)) == 0   # fine-tuning on purpose
  with open(os.path.join(run, "identity.json")) as f:
    assert json.load(f)["data_fingerprint"] != json.load(open(os.path.join(env["base"], "identity.json")))["data_fingerprint"]


def test_a_refused_resume_leaves_the_run_usable(env, tmp_path, capsys):
  """Another vocabulary size: the checkpoint cannot be restored; config.gin stays the run's."""
  run = str(tmp_path / "run")
  shutil.copytree(env["run"], run)
  config = open(os.path.join(run, "config.gin")).read()
  capsys.readouterr()
  assert main(_train_argv(env["data"], run, "--gin.ModelConfig.vocab_size=128", steps=3, fg=env["fg"])) == 2
  err = _err(capsys)
  assert len(err) == 1 and "another model or data shape: ModelConfig.vocab_size 0 -> 128" in err[0], err
  # As a process of its own: nothing else on stderr, then or at exit (orbax's reader threads,
  # left mid-read by a failed restore, printed "Event loop is closed" tracebacks after it).
  argv = _train_argv(env["data"], run, "--gin.ModelConfig.d_ff=96", steps=3, fg=env["fg"])
  proc = subprocess.run([sys.executable, "-m", "scone_jax.cli", *argv], cwd=REPO, capture_output=True, text=True,
                        timeout=240)
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(lines) == 1 and "ModelConfig.d_ff 64 -> 96" in lines[0], proc.stderr[-3000:]
  # Without its config.gin the checkpoint's own shapes refuse it, before orbax reads (one line too).
  os.remove(os.path.join(run, "config.gin"))
  proc = subprocess.run([sys.executable, "-m", "scone_jax.cli", *argv], cwd=REPO, capture_output=True, text=True,
                        timeout=240)
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(lines) == 1 and "does not match" in lines[0] and "params/" in lines[0], (
      proc.stderr[-3000:])
  with open(os.path.join(run, "config.gin"), "w") as f:
    f.write(config)
  assert open(os.path.join(run, "config.gin")).read() == config
  assert main(["eval", "--workdir", run, "--max_batches", "1", "--format", "json"]) == 0


def test_a_resume_with_other_steps_and_logging_is_recorded(env, tmp_path, capsys):
  """Steps, logging and evaluation may change on resume: config.gin takes the new values and
  RUN/config_changes.jsonl records what changed from which step."""
  run = str(tmp_path / "run")
  shutil.copytree(env["run"], run)
  saved = open(os.path.join(run, "config.gin")).read()
  assert "TRAIN_STEPS = 2" in saved and "jax " in saved.splitlines()[0]   # versions and devices in the header
  assert main(_train_argv(env["data"], run, "--gin.TrainConfig.log_every=2", steps=4, fg=env["fg"])) == 0
  config = open(os.path.join(run, "config.gin")).read()
  assert "TRAIN_STEPS = 4" in config and "TrainConfig.log_every = 2" in config
  (record,) = [json.loads(line) for line in open(os.path.join(run, "config_changes.jsonl"))]
  assert record == {"resumed_at_step": 2, "changes": {"TRAIN_STEPS": {"was": "2", "now": "4"},
                                                      "TrainConfig.log_every": {"was": "1", "now": "2"}}}


def test_a_rebuilt_fgram_file_is_refused_by_eval_generate_and_export(env, tmp_path, capsys):
  run, fg = str(tmp_path / "run"), str(tmp_path / "fg")
  shutil.copytree(env["fg"], fg)
  assert main(_train_argv(env["data"], run, fg=fg)) == 0
  build(env["data"], fg, max_n=3, size=30, min_count=2)   # rebuilt in place: other rows
  capsys.readouterr()
  for argv in (["eval", "--workdir", run, "--max_batches", "1"],
               ["export", "--workdir", run, "--out", str(tmp_path / "store")]):
    assert main(argv) == 2
    err = _err(capsys)
    assert len(err) == 1 and "f-gram file" in err[0] and fg in err[0], (argv, err)
  assert not os.path.exists(tmp_path / "store")
  assert main(["eval", "--workdir", run, "--max_batches", "1", "--allow_other_data", "--format", "json"]) == 0


def test_eval_on_other_data_needs_the_same_tokenizer(env, tmp_path, capsys):
  assert main(["eval", "--workdir", env["base"], "--data", env["other"], "--max_batches", "1", "--format", "json"]) == 0
  foreign = str(tmp_path / "foreign")
  shutil.copytree(env["other"], foreign)
  meta_path = os.path.join(foreign, "meta.json")
  meta = json.load(open(meta_path))
  meta["tokenizer_sha256"] = "another tokenizer"
  json.dump(meta, open(meta_path, "w"))
  capsys.readouterr()
  assert main(["eval", "--workdir", env["base"], "--data", foreign, "--max_batches", "1", "--allow_other_data"]) == 2
  err = _err(capsys)
  assert len(err) == 1 and "tokenizer" in err[0], err


def test_a_second_writer_is_refused_and_a_dead_holder_frees_the_lock(env, tmp_path, capsys):
  run = str(tmp_path / "run")
  shutil.copytree(env["run"], run)
  with directory_lock(run):   # another `train` of this run is going on
    capsys.readouterr()
    assert main(_train_argv(env["data"], run, steps=3, fg=env["fg"])) == 2
    err = _err(capsys)
    assert len(err) == 1 and "in use by another process" in err[0], err
    assert main(["export", "--workdir", run, "--out", str(tmp_path / "store")]) == 2
    assert "in use" in _err(capsys)[0]
  # A real process that holds the lock and is killed: the kernel drops its lock with it.
  code = ("import sys, time; from scone_jax.files import directory_lock\n"
          f"with directory_lock({run!r}):\n  print('held', flush=True); time.sleep(60)")
  holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))})
  try:
    assert holder.stdout.readline().strip() == "held"
    assert main(_train_argv(env["data"], run, steps=3, fg=env["fg"])) == 2
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
  finally:
    if holder.poll() is None:
      holder.kill()
  t0 = time.time()
  assert main(_train_argv(env["data"], run, steps=3, fg=env["fg"])) == 0, time.time() - t0


def test_drift_reads_gin_wrapped_values():
  from scone_jax.config import operative_bindings
  text = "# header\nDIR = \\\n    '/a/very/long/path'\nX.b = [1,\n     2]\nX.c = %DIR\n"
  assert operative_bindings(text) == {"DIR": "'/a/very/long/path'", "X.b": "[1, 2]", "X.c": "%DIR"}
