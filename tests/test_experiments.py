"""Every gin file under experiments/ parses and builds (configs + abstract model), and gin
mistakes are one-line errors."""
from __future__ import annotations

import glob
import os

import pytest
from flax import nnx

from scone_jax import experiment
from scone_jax.cli import main
from scone_jax.config import EXPERIMENTS_DIR
from scone_jax.fgram.build import build
from tests.helpers import make_data

GIN_FILES = sorted(os.path.relpath(p, EXPERIMENTS_DIR) for p in glob.glob(f"{EXPERIMENTS_DIR}/**/*.gin", recursive=True))


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("exp")
  data, _ = make_data(str(root / "data"), docs=80)
  build(data, str(root / "fg"), max_n=3, size=50, min_count=2)
  return data, str(root / "fg")


def test_there_are_experiments():
  assert "runs/tiny_mesh8.gin" in GIN_FILES and "models/tiny.gin" in GIN_FILES


@pytest.mark.parametrize("gin_file", GIN_FILES)
def test_gin_file_parses_and_builds(gin_file, dirs):
  data, fg = dirs
  files = [gin_file] if gin_file.startswith("runs/") else ["runs/tiny_cpu.gin", gin_file]
  with open(os.path.join(EXPERIMENTS_DIR, gin_file)) as f:
    text = f.read()
  bindings = [f"DATA_DIR = '{data}'"]
  if "FGRAM_DIR" in text or "scone" in text:
    bindings.append(f"FGRAM_DIR = '{fg}'")
  # Paper-size SCONE files plan K and |V_f| (FgramConfig.max_n/size) for runs whose f-grams are
  # not on this host: build them the way `scone-jax compile` does.
  exp = experiment.load(files, bindings, planned_fgrams="FgramConfig.max_n" in text)
  abstract = nnx.eval_shape(exp.build_model)
  n = sum(x.size for x in __import__("jax").tree.leaves(nnx.state(abstract, nnx.Param)))
  assert n > 0


@pytest.mark.parametrize("override,needle", [
    ("--gin.ModelConfig.no_such_field=1", "no_such_field"),
    ("--gin.NoSuchConfig.x=1", "NoSuchConfig"),
    ("--gin.ModelConfig.d_model=", "d_model"),
    ("--gin.ModelConfig.remat_policy='sometimes'", "remat_policy"),
    ("--gin.DataConfig.seq_len=100000", "longer than the model supports"),
])
def test_bad_bindings_are_one_line_errors(override, needle, dirs, tmp_path, capsys):
  data, _ = dirs
  rc = main(["train", "--gin_file", "runs/tiny_cpu.gin", f"--gin.DATA_DIR='{data}'", override,
             "--workdir", str(tmp_path / "run")])
  err = capsys.readouterr().err.strip()
  assert rc == 2 and len(err.splitlines()) == 1 and needle in err, err
  assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_missing_macro_is_an_error(tmp_path, capsys):
  rc = main(["train", "--gin_file", "runs/tiny_cpu.gin", "--workdir", str(tmp_path / "run")])
  err = capsys.readouterr().err.strip()
  assert rc == 2 and "DATA_DIR" in err or "REQUIRED" in err or "required" in err, err
