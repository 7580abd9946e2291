"""The package as a user installs it (issue 11 item 2): a wheel built from this tree carries every
experiment file, and after a non-editable install into a fresh directory a tiny train started
from an unrelated working directory finds `--gin_file runs/...` and the files they include; a
directory of the user's own files joins through --gin_search_paths; `scone-jax --version`."""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from scone_jax import __version__
from scone_jax.config import EXPERIMENTS_DIR
from tests.helpers import REPO, make_data, tiny_bindings


@pytest.mark.slow
def test_the_wheel_trains_from_any_directory(tmp_path):
  wheels, target, elsewhere = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
  elsewhere.mkdir()
  # Built from a copy of the tree: setuptools writes build/ and egg-info next to the sources.
  source = tmp_path / "source"
  shutil.copytree(REPO, source, symlinks=True, ignore=shutil.ignore_patterns(
      ".venv", ".git", "build", "*.egg-info", "__pycache__", "demo_out", "results", ".*_cache", ".hypothesis"))
  subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q", "-w",
                  str(wheels)], check=True, timeout=300, cwd=tmp_path)
  (wheel,) = glob.glob(str(wheels / "scone_jax-*.whl"))
  assert os.path.basename(wheel).startswith(f"scone_jax-{__version__}-")
  # Every experiment file of the tree is in the wheel (listed independently of setup.py's globs).
  shipped = {n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".gin")}
  ours = {"scone_jax/experiments/" + os.path.relpath(p, EXPERIMENTS_DIR)
          for p in glob.glob(os.path.join(EXPERIMENTS_DIR, "**", "*.gin"), recursive=True)}
  assert ours and shipped == ours
  subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), "-q", wheel],
                 check=True, timeout=300)
  # The installed copy, not this tree: PYTHONPATH puts it before the editable install.
  env = {**os.environ, "PYTHONPATH": str(target), "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  where = subprocess.run([sys.executable, "-c", "import scone_jax; print(scone_jax.__file__)"], cwd=elsewhere,
                         env=env, capture_output=True, text=True, check=True).stdout.strip()
  assert where.startswith(str(target)), where
  # The launchers that `scone-jax sweep` drives come with it.
  launchers = subprocess.run([sys.executable, "-c", "import launch.tpu_pod, launch.xpk, launch.slurm; "
                              "print(launch.tpu_pod.__file__)"], cwd=elsewhere, env=env, capture_output=True,
                             text=True, check=True).stdout.strip()
  assert launchers.startswith(str(target)), launchers
  version = subprocess.run([sys.executable, "-m", "scone_jax.cli", "--version"], cwd=elsewhere, env=env,
                           capture_output=True, text=True, check=True).stdout
  assert version.strip() == f"scone-jax {__version__}"
  data, _ = make_data(str(tmp_path / "data"), docs=40)
  # The user's own model file, in a directory of theirs, including a packaged one.
  mine = tmp_path / "my_experiments" / "models"
  mine.mkdir(parents=True)
  (mine / "one_layer.gin").write_text("include 'models/tiny.gin'\nModelConfig.num_layers = 1\n")
  (mine / "small.gin").write_text("ModelConfig.num_layers = 7\n")   # a packaged name, other contents
  argv = [sys.executable, "-m", "scone_jax.cli", "train", "--gin_file", "models/one_layer.gin", "--gin_file", "runs/cpu.gin",
          "--gin_search_paths", str(tmp_path / "my_experiments"), "--workdir", str(tmp_path / "run"), "--quiet",
          *[f"--gin.{b.replace(' = ', '=')}" for b in tiny_bindings(data, 2)]]
  proc = subprocess.run(argv, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  config = open(tmp_path / "run" / "config.gin").read()
  assert "ModelConfig.num_layers = 1" in config and "ModelConfig.max_seq_len = 1024" in config   # and tiny's
  assert os.listdir(elsewhere) == []   # nothing written where it ran
  # Without the search path the user's file is not found: one line that says what to do.
  proc = subprocess.run(argv[:argv.index("--gin_search_paths")] + argv[argv.index("--workdir"):], cwd=elsewhere,
                        env=env, capture_output=True, text=True, timeout=300)
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(lines) == 1 and "--gin_search_paths" in lines[0], proc.stderr
  # A name both packaged and in a search path, with other contents, is refused (no silent shadow).
  clash = [a if a != "models/one_layer.gin" else "models/small.gin" for a in argv]
  proc = subprocess.run(clash, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(lines) == 1 and "more than one place" in lines[0], proc.stderr


def test_includes_resolve_from_any_directory_without_log_lines(tmp_path, monkeypatch, caplog):
  """From a directory holding no experiment files, `include 'runs/cpu_base.gin'` (inside
  runs/cpu.gin) resolves to the packaged file and gin's per-place misses log nothing."""
  import gin

  from scone_jax import config as C
  monkeypatch.chdir(tmp_path)
  with caplog.at_level("INFO"):
    C.parse_gin(["models/tiny.gin", "runs/cpu.gin"], ["DATA_DIR = '/nowhere'", "TRAIN_STEPS = 3"])
  assert not [r for r in caplog.records if "not found" in r.getMessage().lower()], caplog.text
  assert gin.query_parameter("DataConfig.batch_size") == 8   # set in runs/cpu_base.gin, the include
  assert os.listdir(tmp_path) == []


def test_figures_without_the_plots_extra_say_what_to_install(monkeypatch):
  """matplotlib is an extra: without it the figure step is a one-line error naming the extra.
  (Absence simulated the way Python marks a module missing: sys.modules[name] = None.)"""
  from scone_jax.errors import UserError
  from scone_jax.outputs import pyplot
  monkeypatch.setitem(sys.modules, "matplotlib", None)
  with pytest.raises(UserError, match=r"pip install 'scone_jax\[plots\]'"):
    pyplot()
