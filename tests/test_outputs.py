"""The output guard: no command's output may equal, contain or lie inside its inputs, or replace
an artifact of another kind (scone_jax/outputs.py)."""
from __future__ import annotations

import os

import pytest

from scone_jax.cli import main
from scone_jax.errors import UserError
from scone_jax.fgram.build import build
from scone_jax.outputs import artifact_kind, check_output
from tests.helpers import make_data


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  root = tmp_path_factory.mktemp("outputs")
  data, _ = make_data(str(root / "data"), docs=60)
  build(data, str(root / "fg"), max_n=3, size=20, min_count=2)
  corpus = root / "corpus"
  corpus.mkdir()
  for i in range(3):
    (corpus / f"{i}.txt").write_text(f"def f{i}(x):\n  return x + {i}\n" * 30)
  return {"root": root, "data": data, "fg": str(root / "fg"), "corpus": str(corpus)}


def _one_line(capsys, argv) -> str:
  capsys.readouterr()
  assert main(argv) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1, err
  return err[0]


def test_artifact_kinds(env, tmp_path):
  assert artifact_kind(env["data"]) == "data" and artifact_kind(env["fg"]) == "fgrams"
  assert artifact_kind(str(tmp_path / "absent")) is None
  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / ".lock").write_text("")
  assert artifact_kind(str(tmp_path / "empty")) is None       # hidden files do not count
  assert artifact_kind(env["corpus"]) == "other"
  assert artifact_kind(os.path.join(env["corpus"], "0.txt")) == "file"


def test_fgrams_build_never_replaces_its_data_or_another_artifact(env, capsys):
  before = sorted(os.listdir(env["data"]))
  base = ["fgrams", "build", "--data", env["data"], "--max_n", "3", "--size", "10", "--min_count", "2", "--out"]
  assert "is the input --data" in _one_line(capsys, base + [env["data"]])
  assert "lies inside the input --data" in _one_line(capsys, base + [os.path.join(env["data"], "fg")])
  assert "holds other files" in _one_line(capsys, base + [env["corpus"]])
  assert sorted(os.listdir(env["data"])) == before and artifact_kind(env["data"]) == "data"
  assert main(base + [env["fg"]]) == 0   # its own kind: rebuilt


def test_prepare_never_eats_its_corpus_or_another_artifact(env, capsys):
  files = sorted(os.listdir(env["corpus"]))
  base = ["prepare", "--input", os.path.join(env["corpus"], "*.txt"), "--vocab_size", "64", "--overwrite", "--out"]
  assert "contains the input" in _one_line(capsys, base + [env["corpus"]])
  assert "holds a f-gram vocabulary" in _one_line(capsys, base + [env["fg"]])   # --overwrite: own kind only
  assert sorted(os.listdir(env["corpus"])) == files and artifact_kind(env["fg"]) == "fgrams"


def test_train_and_export_outputs_stay_out_of_their_inputs(env, capsys):
  train = ["train", "--gin_file", "models/tiny.gin", "--gin_file", "methods/scone.gin", "--gin_file", "runs/cpu.gin",
           f"--gin.DATA_DIR='{env['data']}'", f"--gin.FGRAM_DIR='{env['fg']}'", "--gin.TRAIN_STEPS=1", "--workdir"]
  assert "lies inside the input DATA_DIR" in _one_line(capsys, train + [os.path.join(env["data"], "run")])
  assert "is the input FGRAM_DIR" in _one_line(capsys, train + [env["fg"]])
  assert "contains the input DATA_DIR" in _one_line(capsys, train + [str(env["root"])])


def test_check_output_directly(env, tmp_path):
  with pytest.raises(UserError, match="contains the input"):
    check_output(str(env["root"]), "fgrams", inputs={"--data": env["data"]})
  with pytest.raises(UserError, match="holds a prepared data directory"):
    check_output(env["data"], "fgrams")
  with pytest.raises(UserError, match="not empty; pass --overwrite"):
    check_output(env["data"], "data", replace=False, hint="pass --overwrite to replace it")
  check_output(str(tmp_path / "new" / "out"), "run")   # absent, parent creatable: fine
