"""Multi-host training on one machine: `scone-jax train` as 2 processes x 4 CPU devices (jax.distributed
on loopback, gloo collectives) reproduces 1 process x 8 devices on the same (data 2, fsdp 2,
tensor 2) mesh: the same losses step by step and the same final parameters, and the checkpoint
the 2 processes wrote together restores in a single process."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from scone_jax import parallel
from scone_jax.config import MeshConfig
from scone_jax.train.restore import load_run
from scone_jax.train.state import Trainer
from tests.helpers import free_port, make_data, read_metrics, run_all

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 4
TIMEOUT_S = 150


def _train_cmd(data_dir: str, workdir: str, *multihost: str) -> list[str]:
  return [sys.executable, "-m", "scone_jax.cli", "train", "--gin_file", "models/tiny.gin", "--gin_file", "runs/cpu_mesh8.gin",
          "--workdir", workdir, f"--gin.DATA_DIR='{data_dir}'", f"--gin.TRAIN_STEPS={STEPS}",
          "--gin.TrainConfig.log_every=1", "--gin.TrainConfig.eval_batches=1",
          "--gin.TrainConfig.checkpoint_every=2", "--gin.DataConfig.seq_len=32",
          "--gin.DataConfig.batch_size=8", "--gin.ModelConfig.d_model=32", "--gin.ModelConfig.d_ff=64",
          *multihost]


def _restore(workdir: str) -> tuple[Trainer, dict]:
  """The run's trainer and the parameters of its newest checkpoint, restored in this (single,
  8-device) process."""
  loaded = load_run(workdir, mesh_config=MeshConfig(2, 2, 2))
  assert loaded.step == STEPS
  return loaded.trainer, jax.device_get(loaded.params)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["baseline", "scone"])
def test_two_processes_reproduce_one(tmp_path, method):
  """SCONE: each process packs its own distinct f-grams for A_f, and the processes agree on the
  packed shape of every batch (parallel.Agreement over jax.distributed's key-value store)."""
  assert jax.device_count() == 8
  data_dir = make_data(str(tmp_path / "data"))[0]
  extra = []
  if method == "scone":
    from scone_jax.fgram.build import build
    build(data_dir, str(tmp_path / "fg"), max_n=3, size=60, min_count=2)
    extra = ["--gin_file", "methods/scone.gin", f"--gin.FGRAM_DIR='{tmp_path / 'fg'}'", "--gin.FgramConfig.sample_batches=4"]
  one, two = str(tmp_path / "one"), str(tmp_path / "two")
  coordinator = f"127.0.0.1:{free_port()}"
  run_all([(_train_cmd(data_dir, one, *extra), 8, str(tmp_path / "one.log"))] + [
      (_train_cmd(data_dir, two, *extra, "--coordinator_address", coordinator, "--num_processes", "2",
                  "--process_id", str(p)), 4, str(tmp_path / f"two_{p}.log")) for p in range(2)], TIMEOUT_S)

  with open(tmp_path / "two_0.log") as f:
    assert "over 8 devices, 2 process(es)" in f.read()
  a, b = read_metrics(one), read_metrics(two)
  assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))
  losses_a = np.array([a[s]["loss"] for s in sorted(a)])
  losses_b = np.array([b[s]["loss"] for s in sorted(b)])
  np.testing.assert_allclose(losses_b, losses_a, rtol=1e-5)
  print(f"max loss difference, 2 processes vs 1: {np.max(np.abs(losses_a - losses_b)):.3g}")

  # Written by two processes (each its own shards), restored by one: the same parameters.
  trainer, params_a = _restore(one)
  _, params_b = _restore(two)
  leaves_a, leaves_b = jax.tree.leaves(params_a), jax.tree.leaves(params_b)
  assert len(leaves_a) == len(leaves_b) > 0
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-5)
  print(f"max parameter difference: {max(float(np.max(np.abs(x - y))) for x, y in zip(leaves_a, leaves_b)):.3g}")
  # Training moved the parameters away from their initial values, so the comparison means something.
  initial = jax.tree.leaves(jax.device_get(trainer.init().params))
  assert max(float(np.max(np.abs(x - y))) for x, y in zip(leaves_a, initial)) > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("victim", [1, 0], ids=["worker-killed", "coordinator-killed"])
def test_a_killed_process_stops_the_others_with_an_error(tmp_path, victim):
  data_dir = make_data(str(tmp_path / "data"))[0]
  coordinator = f"127.0.0.1:{free_port()}"
  procs, logs = [], []
  try:
    for p in range(2):
      cmd = _train_cmd(data_dir, str(tmp_path / "run"), "--coordinator_address", coordinator, "--num_processes", "2",
                       "--process_id", str(p), "--heartbeat_timeout_seconds", "10", "--gin.TRAIN_STEPS=100000")
      env = {**os.environ, "XLA_FLAGS": parallel.fake_cpu_devices_flags(4), "JAX_PLATFORMS": "cpu"}
      logs.append(str(tmp_path / f"p{p}.log"))
      procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=open(logs[-1], "w"), stderr=subprocess.STDOUT))
    deadline = time.monotonic() + TIMEOUT_S
    while not (tmp_path / "run" / "metrics.jsonl").exists() or len(read_metrics(str(tmp_path / "run"))) < 3:
      assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "training did not start"
      time.sleep(0.2)
    procs[victim].kill()
    survivor = procs[1 - victim]
    t0 = time.monotonic()
    rc = survivor.wait(timeout=120)   # bounded: never hangs in a collective
    waited = time.monotonic() - t0
    out = open(logs[1 - victim]).read()
    assert rc != 0, out[-2000:]
    print(f"survivor exited {rc} after {waited:.1f} s")
    # How the survivor learns of it depends on where the kill lands: missed heartbeats, a refused
    # connection, or (killed inside an all-reduce) gloo's EnforceNotMet over the torn message.
    assert any(w in out for w in ("heartbeat", "Heartbeat", "unavailable", "UNAVAILABLE", "disconnected",
                                  "Connection", "connection", "error", "EnforceNotMet")), out[-2000:]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()


@pytest.mark.slow
def test_sigterm_to_one_process_saves_the_same_step_on_every_process(tmp_path):
  """A preemption notice reaches one host: SIGTERM to process 1 only. jax's preemption sync
  manager names one step to both, both save it together and exit 0 (process 0 says so); run again,
  the two processes finish with the losses of one process x 8 devices trained straight through."""
  import signal
  steps = 60
  data_dir = make_data(str(tmp_path / "data"))[0]
  long = [f"--gin.TRAIN_STEPS={steps}", "--gin.TrainConfig.checkpoint_every=1000"]
  run_all([(_train_cmd(data_dir, str(tmp_path / "one"), *long), 8, str(tmp_path / "one.log"))], TIMEOUT_S)
  run = str(tmp_path / "run")
  coordinator = f"127.0.0.1:{free_port()}"
  two = [(_train_cmd(data_dir, run, *long, "--coordinator_address", coordinator, "--num_processes", "2",
                     "--process_id", str(p)), 4, str(tmp_path / f"p{p}.log")) for p in range(2)]
  procs = []
  try:
    for cmd, devices, log in two:
      env = {**os.environ, "XLA_FLAGS": parallel.fake_cpu_devices_flags(devices), "JAX_PLATFORMS": "cpu"}
      procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT))
    deadline = time.monotonic() + TIMEOUT_S
    while not (tmp_path / "run" / "metrics.jsonl").exists() or len(read_metrics(run)) < 3:
      assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "training did not start"
      time.sleep(0.1)
    procs[1].send_signal(signal.SIGTERM)
    codes = [p.wait(timeout=TIMEOUT_S) for p in procs]   # bounded: a mismatched save would hang
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  out = open(tmp_path / "p0.log").read()
  assert codes == [0, 0], out[-3000:]
  saved = [int(w) for w in out.split("SIGTERM: saved step ")[1].split()[:1]]
  assert len(saved) == 1 and 3 <= saved[0] < steps, out[-2000:]
  assert sorted(int(d) for d in os.listdir(os.path.join(run, "checkpoints")) if d.isdigit()) == saved
  run_all(two, TIMEOUT_S)   # resumed from the saved step, to the end
  a, b = read_metrics(str(tmp_path / "one")), read_metrics(run)
  assert sorted(a) == sorted(b) == list(range(1, steps + 1))
  np.testing.assert_allclose([b[s]["loss"] for s in sorted(b)], [a[s]["loss"] for s in sorted(a)], rtol=1e-5)
  print(f"SIGTERM to process 1: both processes saved step {saved[0]} of {steps}")


def _wait_for_socket_on(port: int, proc, timeout: float = 120.0) -> None:
  """Until a TCP socket of this host has `port` at one end (the coordinator listening on it):
  jax.distributed.initialize has begun. Polled instead of a fixed sleep, since imports take
  seconds to tens of seconds depending on the machine's load."""
  needle = f":{port:04X} "
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
      try:
        with open(table) as f:
          if any(needle in line for line in f.readlines()[1:]):
            return
      except OSError:
        pass
    assert proc.poll() is None, f"exited with {proc.returncode} before reaching the coordinator"
    time.sleep(0.05)
  raise AssertionError(f"no socket on port {port} after {timeout} s")


@pytest.mark.slow
def test_start_up_never_hangs_silently(tmp_path):
  """A process whose peers never come stops after --startup_timeout_seconds with one line, and
  Ctrl-C while it waits stops it at once (jax.distributed.initialize blocks in C++)."""
  import signal
  data_dir = make_data(str(tmp_path / "data"))[0]
  env = {**os.environ, "XLA_FLAGS": parallel.fake_cpu_devices_flags(4), "JAX_PLATFORMS": "cpu"}
  for process_id, stop in ((1, "timeout"), (0, "timeout"), (1, signal.SIGINT), (0, signal.SIGTERM)):
    port = free_port()
    limit = "8" if stop == "timeout" else "60"   # a signal must land inside initialize, before its limit
    cmd = _train_cmd(data_dir, str(tmp_path / f"run{process_id}"), "--coordinator_address", f"127.0.0.1:{port}",
                     "--num_processes", "2", "--process_id", str(process_id), "--startup_timeout_seconds", limit)
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if stop != "timeout":
      if process_id == 0:   # the coordinator: inside initialize once it listens (its watcher is set up before)
        _wait_for_socket_on(port, proc)
        time.sleep(0.5)
      else:   # a client's refused connections leave no socket to see: imports take seconds (more on a loaded box)
        time.sleep(20)
      proc.send_signal(stop)
    err = proc.communicate(timeout=120)[1].strip().splitlines()
    want = (2, "did not all reach the coordinator") if stop == "timeout" else (130, "interrupted while waiting")
    assert proc.returncode == want[0] and len(err) == 1 and want[1] in err[0], (process_id, stop, proc.returncode, err)
    assert not os.path.exists(tmp_path / f"run{process_id}"), "nothing written before the processes met"


@pytest.mark.parametrize("env,tpu,expected", [
    ({}, False, None),
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}, False, None),   # one task: nothing to join
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}, False, "SLURM"),
    ({"TPU_WORKER_HOSTNAMES": "h0,h1"}, False, "GKE TPU"),
    ({"OMPI_MCA_orte_hnp_uri": "1.0;tcp://10.0.0.1:1"}, False, "Open MPI"),
    ({}, True, "Cloud TPU VM"),
])
def test_multi_host_start_is_detected_from_local_evidence(monkeypatch, env, tpu, expected):
  """jax.distributed.initialize() runs, with jax's own detection, exactly where an environment is
  named; with none (this machine) it is not called at all, so nothing is asked off the host."""
  for name in ("SLURM_JOB_ID", "SLURM_NTASKS", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS",
               "OMPI_MCA_orte_hnp_uri"):
    monkeypatch.delenv(name, raising=False)
  for name, value in env.items():
    monkeypatch.setenv(name, value)
  monkeypatch.setattr(parallel, "tpu_attached", lambda: tpu)
  assert parallel.cluster_environment() == expected
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: calls.append(kwargs))
  monkeypatch.setattr(jax.config, "update", lambda *args: None)   # gloo stays out of this process
  parallel.initialize_distributed(command="eval")
  if expected is None:
    assert calls == []
  else:
    [kwargs] = calls
    assert kwargs["coordinator_address"] is None and kwargs["num_processes"] is None and kwargs["process_id"] is None
