"""launch/: the commands each launcher prints with --dry-run, the sbatch script's shell logic, the
sweep alias, and what happens when a binary is missing.

gcloud, xpk, sbatch, srun and scontrol are external cluster tools; where a test must execute
them it puts a small stub on PATH that records its argv. `scone-jax` itself is never stubbed:
the SLURM task script is run with bash's `exec` replaced by a function that prints its argv.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import textwrap

import pytest

from launch import slurm, sweep, tpu_pod, xpk

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU = ["gcloud", "compute", "tpus", "tpu-vm"]
GIN_FLAGS = ["--gin_file", "experiments/a.gin", "--gin_file", "experiments/b.gin",
             "--gin.TRAIN_STEPS=100", "--gin.DATA_DIR='gs://bkt/data dir'"]
TRAIN_ARGV = ["scone-jax", "train", "--gin_file", "experiments/a.gin",
              "--gin_file", "experiments/b.gin", "--gin.TRAIN_STEPS=100",
              "--gin.DATA_DIR='gs://bkt/data dir'"]


def steps_of(text: str) -> list[tuple]:
  """Dry-run output -> [('cmd', argv) | ('file', path, text)], reading here-documents."""
  steps, lines = [], text.splitlines()
  i = 0
  while i < len(lines):
    line = lines[i]
    if line.endswith("<<'SCONE_EOF'"):
      end = lines.index("SCONE_EOF", i)
      words = shlex.split(line[:-len("<<'SCONE_EOF'")])
      steps.append(("file", words[words.index(">") + 1], "\n".join(lines[i + 1:end]) + "\n"))
      i = end + 1
    else:
      steps.append(("cmd", shlex.split(line)))
      i += 1
  return steps


def dry_run(module, argv: list[str], capsys) -> list[tuple]:
  assert module.main(argv + ["--dry-run"]) == 0
  out = capsys.readouterr().out
  return steps_of(out)


def commands(steps) -> list[list[str]]:
  assert all(step[0] == "cmd" for step in steps), steps
  return [step[1] for step in steps]


def run_module(module: str, argv: list[str], env: dict | None = None, cwd: str = REPO):
  return subprocess.run([sys.executable, "-m", f"launch.{module}", *argv], cwd=cwd,
                        env=env, capture_output=True, text=True, timeout=60)


def write_stub(bin_dir, name: str, body: str) -> None:
  path = os.path.join(bin_dir, name)
  with open(path, "w") as f:
    f.write(body)
  os.chmod(path, 0o755)


# ---- tpu_pod -----------------------------------------------------------------------------------

@pytest.mark.parametrize("flags,version,capacity", [
    (["--accelerator_type", "v5p-256", "--spot"], "v2-alpha-tpuv5", ["--spot"]),
    (["--accelerator_type", "v6e-256", "--preemptible", "--reserved"], "v2-alpha-tpuv6e",
     ["--preemptible", "--reserved"]),
    (["--accelerator_type", "v5litepod-16", "--version", "custom-rt"], "custom-rt", []),
])
def test_tpu_create_reuses_then_creates(flags, version, capacity, capsys):
  where = ["--name", "my-tpu", "--zone", "us-east5-a"]
  [argv] = commands(dry_run(tpu_pod, ["create", *where, *flags], capsys))
  cut = argv.index("||")
  assert argv[:cut] == TPU + ["describe", "my-tpu", "--zone=us-east5-a"]
  accelerator = flags[1]
  assert argv[cut + 1:] == TPU + ["create", "my-tpu", "--zone=us-east5-a",
                                  f"--accelerator-type={accelerator}", f"--version={version}",
                                  *capacity]


def test_tpu_create_rejects_spot_with_preemptible_and_unknown_family(capsys):
  with pytest.raises(SystemExit):
    tpu_pod.main(["create", "--name", "t", "--zone", "z", "--accelerator_type", "v5p-8",
                  "--spot", "--preemptible", "--dry-run"])
  assert tpu_pod.main(["create", "--name", "t", "--zone", "z", "--accelerator_type", "v9x-8",
                       "--dry-run"]) == 2
  assert "pass --version" in capsys.readouterr().err


def remote_train_words(remote: str) -> list[str]:
  """The `scone-jax train ...` words of the remote shell text (before `2>&1 | tee`)."""
  words = shlex.split(remote)
  start = words.index("scone-jax")
  return words[start:words.index("2>&1", start)]


def test_tpu_run_on_all_workers_with_logs(capsys):
  argv = ["run", "--name", "my-tpu", "--zone", "us-east5-a", "--project", "proj",
          *GIN_FLAGS, "--workdir", "gs://bkt/runs/exp1", "--env", "XLA_FLAGS=--a=1 --b"]
  [ssh] = commands(dry_run(tpu_pod, argv, capsys))
  assert ssh[:-2] == TPU + ["ssh", "my-tpu", "--zone=us-east5-a", "--project=proj",
                            "--worker=all"]
  assert ssh[-2] == "--command"
  remote = ssh[-1]
  assert remote_train_words(remote) == TRAIN_ARGV + ["--workdir", "gs://bkt/runs/exp1"]
  assert "--coordinator_address" not in remote  # Cloud TPU: found by scone-jax itself
  words = shlex.split(remote)
  assert words[words.index("tee") + 1:words.index("tee") + 3] == ["-a", "scone_logs/exp1.log"]
  assert "export XLA_FLAGS='--a=1 --b'" in remote
  assert subprocess.run(["bash", "-n", "-c", remote]).returncode == 0


def test_tpu_run_passes_libtpu_init_args_through(capsys, monkeypatch):
  """LIBTPU_INIT_ARGS of the launching shell reaches every worker; an --env of it wins."""
  monkeypatch.setenv("LIBTPU_INIT_ARGS", "--xla_tpu_enable_async_collective_fusion=true")
  base = ["run", "--name", "t", "--zone", "z", *GIN_FLAGS, "--workdir", "gs://b/r"]
  [ssh] = commands(dry_run(tpu_pod, base, capsys))
  assert "export LIBTPU_INIT_ARGS=--xla_tpu_enable_async_collective_fusion=true" in ssh[-1]
  [ssh] = commands(dry_run(tpu_pod, base + ["--env", "LIBTPU_INIT_ARGS=--mine"], capsys))
  assert ssh[-1].count("LIBTPU_INIT_ARGS") == 1 and "export LIBTPU_INIT_ARGS=--mine" in ssh[-1]
  monkeypatch.delenv("LIBTPU_INIT_ARGS")
  [ssh] = commands(dry_run(tpu_pod, base, capsys))
  assert "LIBTPU_INIT_ARGS" not in ssh[-1]


def test_tpu_run_detached(capsys):
  [ssh] = commands(dry_run(tpu_pod, ["run", "--name", "t", "--zone", "z", *GIN_FLAGS,
                                     "--workdir", "gs://b/r", "--detach"], capsys))
  words = shlex.split(ssh[-1])
  start = words.index("(nohup")
  assert words[start + 1:words.index(">>")] == TRAIN_ARGV + ["--workdir", "gs://b/r"]
  assert words[words.index(">>") + 1:] == ["scone_logs/r.log", "2>&1", "<", "/dev/null", "&)"]
  assert subprocess.run(["bash", "-n", "-c", ssh[-1]]).returncode == 0


def test_tpu_setup_sources(tmp_path, capsys):
  where = ["--name", "t", "--zone", "z"]
  [ssh] = commands(dry_run(tpu_pod, ["setup", *where, "--pip_spec", "scone_jax[tpu]==0.1"],
                           capsys))
  assert ssh[:-2] == TPU + ["ssh", "t", "--zone=z", "--worker=all"]
  assert shlex.split(ssh[-1]) == ["python3", "-m", "pip", "install", "--upgrade",
                                  "scone_jax[tpu]==0.1"]

  wheel = tmp_path / "scone_jax-0.1.0-py3-none-any.whl"
  wheel.write_bytes(b"")
  scp, ssh = commands(dry_run(tpu_pod, ["setup", *where, "--package", str(wheel)], capsys))
  assert scp == TPU + ["scp", str(wheel), "t:", "--zone=z", "--worker=all"]
  assert shlex.split(ssh[-1])[-1] == "./scone_jax-0.1.0-py3-none-any.whl[tpu]"

  tar, scp, ssh = commands(dry_run(tpu_pod, ["setup", *where, "--repo", REPO], capsys))
  assert tar[:3] == ["tar", "-czf", scp[5]] and tar[-3:] == ["-C", REPO, "."]
  assert "--exclude=.git" in tar and "--exclude=.venv" in tar
  assert scp == TPU + ["scp", tar[2], "t:", "--zone=z", "--worker=all"]
  remote = shlex.split(ssh[-1])
  assert remote[-6:] == ["python3", "-m", "pip", "install", "--upgrade", "./scone_jax_src[tpu]"]

  assert tpu_pod.main(["setup", *where, "--package", str(tmp_path / "nope.whl"),
                       "--dry-run"]) == 2
  assert "no such file" in capsys.readouterr().err


def test_tpu_up_logs_delete(tmp_path, capsys):
  where = ["--name", "t", "--zone", "z"]
  steps = commands(dry_run(tpu_pod, ["up", *where, "--accelerator_type", "v6e-256",
                                     "--pip_spec", "scone_jax", *GIN_FLAGS,
                                     "--workdir", "gs://b/r"], capsys))
  assert [argv[4] for argv in steps] == ["describe", "ssh", "ssh"]
  assert steps[0][steps[0].index("||") + 5] == "create"
  assert remote_train_words(steps[2][-1]) == TRAIN_ARGV + ["--workdir", "gs://b/r"]

  mkdir, ssh = commands(dry_run(tpu_pod, ["logs", *where, "--run_name", "r",
                                          "--local_dir", str(tmp_path)], capsys))
  assert mkdir == ["mkdir", "-p", str(tmp_path / "r")]
  assert ssh == TPU + ["ssh", "t", "--zone=z", "--worker=all", "--command",
                       "cat scone_logs/r.log", f"--output-directory={tmp_path / 'r'}"]
  assert commands(dry_run(tpu_pod, ["delete", *where], capsys)) == [
      TPU + ["delete", "t", "--zone=z", "--quiet"]]
  assert not os.listdir(tmp_path)  # dry run executed nothing


def test_tpu_create_runs_describe_then_create_only_when_missing(tmp_path):
  calls = tmp_path / "calls.jsonl"
  write_stub(tmp_path, "gcloud", textwrap.dedent(f"""\
      #!{sys.executable}
      import json, os, sys
      with open({str(calls)!r}, "a") as f:
        f.write(json.dumps(sys.argv[1:]) + "\\n")
      sys.exit(int(os.environ["DESCRIBE_STATUS"]) if "describe" in sys.argv else 0)
      """))
  argv = ["create", "--name", "t", "--zone", "z", "--accelerator_type", "v5p-8"]
  for describe_status, expected in [("0", ["describe"]), ("1", ["describe", "create"])]:
    calls.write_text("")
    env = dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}",
               DESCRIBE_STATUS=describe_status)
    result = run_module("tpu_pod", argv, env)
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)[3] for line in calls.read_text().splitlines()] == expected


# ---- xpk ---------------------------------------------------------------------------------------

def test_xpk_create_delete_list(capsys):
  cluster = ["--cluster", "c1", "--project", "p", "--zone", "us-east5-a"]
  [create] = commands(dry_run(xpk, ["create", *cluster, "--workload", "scone-1b",
                                    "--tpu_type", "v5p-256", "--num_slices", "2",
                                    "--docker_image", "gcr.io/p/scone:latest",
                                    "--env", "A=1", "--max_restarts", "3", *GIN_FLAGS,
                                    "--workdir", "gs://b/r"], capsys))
  assert create == ["xpk", "workload", "create", "--cluster=c1", "--workload=scone-1b",
                    "--tpu-type=v5p-256", "--num-slices=2", "--docker-image=gcr.io/p/scone:latest",
                    "--project=p", "--zone=us-east5-a", "--env=A=1", "--max-restarts=3",
                    "--command", shlex.join(TRAIN_ARGV + ["--workdir", "gs://b/r"])]

  [create] = commands(dry_run(xpk, ["create", "--cluster", "c1", "--workload", "w",
                                    "--tpu_type", "v6e-256", *GIN_FLAGS, "--workdir", "gs://b/r"],
                              capsys))
  assert "--base-docker-image=python:3.11-slim" in create and "--script-dir=." in create
  container = shlex.split(create[-1])
  assert container[:6] == ["python3", "-m", "pip", "install", ".[tpu]", "&&"]
  assert container[6:] == TRAIN_ARGV + ["--workdir", "gs://b/r"]

  assert commands(dry_run(xpk, ["delete", "--cluster", "c1", "--workload", "w", "--force"],
                          capsys)) == [["xpk", "workload", "delete", "--cluster=c1",
                                        "--workload=w", "--force"]]
  assert commands(dry_run(xpk, ["list", "--cluster", "c1"], capsys)) == [
      ["xpk", "workload", "list", "--cluster=c1"]]
  assert xpk.main(["delete", "--cluster", "c1", "--workload", "Bad_Name", "--dry-run"]) == 2
  assert "workload name" in capsys.readouterr().err


# ---- slurm -------------------------------------------------------------------------------------

def slurm_script(argv: list[str], capsys) -> tuple[str, str, list[str]]:
  (kind, path, script), (_, sbatch) = dry_run(slurm, argv, capsys)
  assert kind == "file"
  return path, script, sbatch


def between(text: str, start: str, end: str) -> str:
  return text[text.index(start):text.index(end)]


@pytest.mark.parametrize("process_per,tasks", [("gpu", 4), ("node", 1)])
def test_slurm_script_srun_and_train_command(process_per, tasks, tmp_path, capsys):
  argv = ["--nodes", "2", "--gpus_per_node", "4", "--process_per", process_per,
          "--partition", "gpu", "--sbatch_option=--qos=high", "--env", "NCCL_DEBUG=WARN",
          "--script_dir", str(tmp_path), "--job_name", "exp1", *GIN_FLAGS,
          "--workdir", "/shared/runs/exp1"]
  path, script, sbatch = slurm_script(argv, capsys)
  assert path == str(tmp_path / "exp1.sbatch") and sbatch == ["sbatch", path]
  assert not os.path.exists(path)  # dry run
  directives = [line.split(None, 1)[1] for line in script.splitlines()
                if line.startswith("#SBATCH")]
  assert directives == ["--job-name=exp1", "--nodes=2", f"--ntasks-per-node={tasks}",
                        "--gpus-per-node=4", "--output=%x-%j.out", "--partition=gpu",
                        "--qos=high"]
  [srun] = [line for line in script.splitlines() if line.startswith("srun")]
  assert shlex.split(srun) == ["srun", f"--ntasks-per-node={tasks}", "--kill-on-bad-exit=1",
                               "bash", "-c", "$TASK_SCRIPT"]
  task = between(script, "exec ", "\nTASK\n").replace("\\\n", " ")
  assert shlex.split(task) == ["exec", *TRAIN_ARGV, "--workdir", "/shared/runs/exp1",
                               "--coordinator_address", "$COORDINATOR_ADDRESS",
                               "--num_processes", "$NUM_PROCESSES",
                               "--process_id", "$SLURM_PROCID"]
  assert ("CUDA_VISIBLE_DEVICES" in script) == (process_per == "gpu")
  assert "export XLA_PYTHON_CLIENT_MEM_FRACTION=0.9\nexport NCCL_DEBUG=WARN\n" in script
  assert subprocess.run(["bash", "-n", "-c", script]).returncode == 0


def fake_slurm_bin(tmp_path) -> str:
  """A bin dir with `scontrol show hostnames LIST` printing $STUB_HOSTS, one per line."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir(exist_ok=True)
  write_stub(bin_dir, "scontrol", textwrap.dedent("""\
      #!/bin/bash
      [[ "$1 $2" == "show hostnames" && "$3" == "$SLURM_JOB_NODELIST" ]] || exit 3
      for host in $STUB_HOSTS; do echo "$host"; done
      """))
  return str(bin_dir)


@pytest.mark.parametrize("slurm_env,address,num_processes", [
    ({"SLURM_JOB_NODELIST": "gpu-[003-004]", "SLURM_NTASKS": "8",
      "STUB_HOSTS": "gpu-003 gpu-004"}, "gpu-003:23456", "8"),
    # No SLURM_NTASKS: nodes x tasks per node.
    ({"SLURM_JOB_NODELIST": "n[7,9,11]", "SLURM_JOB_NUM_NODES": "3",
      "STUB_HOSTS": "n7 n9 n11"}, "n7:23456", "12"),
])
def test_slurm_coordinator_snippet(slurm_env, address, num_processes, tmp_path, capsys):
  _, script, _ = slurm_script(["--gpus_per_node", "4", "--port", "23456",
                               "--gin_file", "a.gin", "--workdir", "w"], capsys)
  snippet = between(script, "# >>> coordinator", "# <<< coordinator")
  env = {"PATH": f"{fake_slurm_bin(tmp_path)}:/usr/bin:/bin", **slurm_env}
  result = subprocess.run(
      ["bash", "-c", f"set -euo pipefail\n{snippet}\nenv | grep -E '^(COORDINATOR_ADDRESS|"
                     "NUM_PROCESSES)=' | sort"],
      env=env, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr
  assert result.stdout.splitlines() == [f"COORDINATOR_ADDRESS={address}",
                                        f"NUM_PROCESSES={num_processes}"]

  env["STUB_HOSTS"] = ""  # no host: a clear error, not an empty address
  result = subprocess.run(["bash", "-c", f"set -euo pipefail\n{snippet}"], env=env,
                          capture_output=True, text=True)
  assert result.returncode == 1 and "no host in SLURM_JOB_NODELIST" in result.stderr


def test_slurm_whole_script_with_stub_srun(tmp_path, capsys):
  """Runs the rendered script end to end; srun runs the task script once per task with
  `exec` printing the argv and CUDA_VISIBLE_DEVICES it would have started scone-jax with."""
  _, script, _ = slurm_script(["--nodes", "2", "--gpus_per_node", "2", "--port", "999",
                               *GIN_FLAGS, "--workdir", "/shared/r"], capsys)
  bin_dir = fake_slurm_bin(tmp_path)
  write_stub(bin_dir, "srun", textwrap.dedent(f"""\
      #!{sys.executable}
      import json, os, subprocess, sys
      per_node = int(sys.argv[1].split("=")[1])
      assert sys.argv[2:4] == ["--kill-on-bad-exit=1", "bash"] and sys.argv[4] == "-c"
      show = 'exec() {{ printf "%s\\\\0" "$CUDA_VISIBLE_DEVICES" "$@"; }}\\n'
      for node in range(int(os.environ["SLURM_JOB_NUM_NODES"])):
        for local in range(per_node):
          env = dict(os.environ, SLURM_PROCID=str(node * per_node + local),
                     SLURM_LOCALID=str(local), SLURM_NTASKS=os.environ["SLURM_NTASKS"])
          out = subprocess.run(["bash", "-c", show + sys.argv[5]], env=env, check=True,
                               capture_output=True, text=True).stdout
          print(json.dumps(out.split("\\0")[:-1]))
      """))
  env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "SLURM_JOB_NODELIST": "h[1-2]",
         "STUB_HOSTS": "h1 h2", "SLURM_NTASKS": "4", "SLURM_JOB_NUM_NODES": "2"}
  result = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr
  tasks = [json.loads(line) for line in result.stdout.splitlines()]
  expected = [[str(process_id % 2), *TRAIN_ARGV, "--workdir", "/shared/r",
               "--coordinator_address", "h1:999", "--num_processes", "4",
               "--process_id", str(process_id)] for process_id in range(4)]
  assert tasks == expected


@pytest.mark.parametrize("visible,local_id,expected", [("4,5,6,7", "2", "6"), ("", "3", "3")])
def test_slurm_gpu_binding(visible, local_id, expected):
  env = {"PATH": "/usr/bin:/bin", "SLURM_LOCALID": local_id}
  if visible:
    env["CUDA_VISIBLE_DEVICES"] = visible
  result = subprocess.run(["bash", "-c", slurm.GPU_BINDING + 'echo "$CUDA_VISIBLE_DEVICES"'],
                          env=env, capture_output=True, text=True)
  assert result.stdout.strip() == expected


def test_slurm_submits_the_printed_script(tmp_path, capsys):
  argv = ["--script_dir", str(tmp_path / "scripts"), "--gin_file", "a.gin", "--workdir", "w"]
  _, printed, _ = slurm_script(argv, capsys)
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  write_stub(bin_dir, "sbatch", f'#!/bin/bash\necho "$@" > {tmp_path}/sbatch_args\n'
                                'exit "${SBATCH_STATUS:-0}"\n')
  env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
  result = run_module("slurm", argv, env)
  assert result.returncode == 0, result.stderr
  script_path = tmp_path / "scripts" / "scone.sbatch"
  assert script_path.read_text() == printed
  assert (tmp_path / "sbatch_args").read_text().split() == [str(script_path)]

  result = run_module("slurm", argv, dict(env, SBATCH_STATUS="1"))
  assert result.returncode == 1
  last = result.stderr.strip().splitlines()[-1]  # after the "+ sbatch ..." trace
  assert last == f"python -m launch.slurm: error: exit status 1 from: sbatch {script_path}"


# ---- sweep: an alias of `scone-jax sweep` (tests/test_sweep.py tests the command) ----------------

SWEEP = ["--gin_file", "models/tiny.gin", "--gin_file", "runs/cpu.gin", "--gin.FgramConfig.max_n=3",
         "--gin.ModelConfig.vocab_size=64", "--min_count", "2", "--axis", "FgramConfig.size=8",
         "--axis", "FgramConfig.num_layers=1,2,3", "--baselines", "none"]


def test_sweep_is_an_alias_of_scone_jax_sweep(tmp_path, capsys):
  result = run_module("sweep", ["--help"])
  assert result.returncode == 0 and "usage: scone-jax sweep" in result.stdout and "--axis" in result.stdout
  assert sweep.main(["--gin_file", "e.gin", "--grid", "a.b=[1]", "--workdir", "w", "--out", "o"]) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and "unrecognized arguments" in err and "--grid" in err
  steps = dry_run(sweep, [*SWEEP, "--data", str(tmp_path / "d"), "--out", "gs://b/sw", "--backend", "tpu",
                          "--name", "t", "--zone", "z"], capsys)
  steps = [step for step in steps if step[0] == "file" or step[1][:1] != ["#"]]   # the plan's comments
  assert steps[0][:2] == ("file", "sweep-sw.json")
  runs = [remote_train_words(step[1][-1]) for step in steps[2:]]
  assert [r[-1] for r in runs] == [f"gs://b/sw/runs/size=8,num_layers={n},seed=0" for n in (1, 2, 3)]


def test_sweep_missing_binary_is_one_line(tmp_path):
  # PATH: `test` and scone-jax (what the f-gram build step needs), no gcloud.
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  os.symlink(shutil.which("test"), bin_dir / "test")
  os.symlink(os.path.join(os.path.dirname(sys.executable), "scone-jax"), bin_dir / "scone-jax")
  argv = [*SWEEP, "--data", str(tmp_path / "d"), "--out", str(tmp_path / "sw"), "--backend", "tpu",
          "--name", "t", "--zone", "z"]
  result = run_module("sweep", argv, {"PATH": str(bin_dir)})
  assert result.returncode == 2 and result.stdout == ""
  [line] = result.stderr.strip().splitlines()
  assert line.startswith("scone-jax sweep: error: `gcloud` not found on PATH; install the Google Cloud CLI"), line
  assert os.listdir(tmp_path) == ["bin"]  # nothing written before the check


@pytest.mark.parametrize("keep_going,runs_started,status", [(False, 1, 5), (True, 3, 5)])
def test_sweep_stops_at_first_failure_unless_keep_going(keep_going, runs_started, status, tmp_path,
                                                        tiny_corpus):
  calls = tmp_path / "calls"
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  # The first run fails with status 5, the others succeed.
  write_stub(bin_dir, "gcloud", f'#!/bin/bash\necho run >> {calls}\n'
                                f'[[ $(wc -l < {calls}) == 1 ]] && exit 5\nexit 0\n')
  out = tmp_path / "sw"
  # The f-grams exist already: the sweep's `test -f FG/meta.json || scone-jax fgrams build` skips.
  from scone_jax.cli import main
  assert main(["fgrams", "build", "--data", tiny_corpus, "--max_n", "3", "--size", "8", "--min_count", "2",
               "--out", str(out / "fgrams" / "k3_s8_c2")]) == 0
  argv = [*SWEEP, "--data", tiny_corpus, "--out", str(out), "--backend", "tpu", "--name", "t", "--zone", "z"]
  argv += ["--keep_going"] if keep_going else []
  path = f"{bin_dir}:{os.path.dirname(sys.executable)}:{os.environ['PATH']}"
  result = run_module("sweep", argv, dict(os.environ, PATH=path))
  assert result.returncode == status, result.stderr
  assert len(calls.read_text().splitlines()) == runs_started
  assert len(json.loads((out / "sweep.json").read_text())["runs"]) == 3


# ---- every launcher ----------------------------------------------------------------------------

MISSING = [
    ("tpu_pod", ["delete", "--name", "t", "--zone", "z"], "gcloud"),
    ("xpk", ["list", "--cluster", "c"], "xpk"),
    ("slurm", ["--gin_file", "a.gin", "--workdir", "w", "--script_dir", "{tmp}/s"], "sbatch"),
]


@pytest.mark.parametrize("module,argv,binary", MISSING)
def test_missing_binary_is_one_line(module, argv, binary, tmp_path):
  (tmp_path / "empty").mkdir()
  argv = [word.replace("{tmp}", str(tmp_path)) for word in argv]
  result = run_module(module, argv, {"PATH": str(tmp_path / "empty")})
  assert result.returncode == 2 and result.stdout == ""
  [line] = result.stderr.strip().splitlines()
  assert line.startswith(f"python -m launch.{module}: error: `{binary}` not found on PATH")
  assert os.listdir(tmp_path) == ["empty"]  # nothing written before the check


@pytest.mark.parametrize("module", ["tpu_pod", "xpk", "slurm"])
def test_help_and_bad_flags(module):
  result = run_module(module, ["--help"])
  assert result.returncode == 0 and "usage: python -m launch." in result.stdout
  assert run_module(module, ["--no_such_flag"]).returncode == 2


def test_gin_bindings_only_where_a_run_trains(capsys):
  with pytest.raises(SystemExit):
    tpu_pod.main(["delete", "--name", "t", "--zone", "z", "--gin.a=1", "--dry-run"])
  assert "only apply to commands that train" in capsys.readouterr().err
