"""`scone-jax compare`'s planning: which sweep runs it may reuse (exactly the run it would train),
its equal-FLOPs baselines and the differences it reports."""
from __future__ import annotations

import math
import os

import pytest

from scone_jax import compare
from tests.helpers import TINY_STEPS


def _argv(run, **over):
  """The train argv of the tiny_scone_run fixture (tests/conftest.py), with bindings replaced."""
  flags = {"DATA_DIR": f"'{run['data']}'", "FGRAM_DIR": f"'{run['fgrams']}'", "TRAIN_STEPS": str(TINY_STEPS),
           "TrainConfig.checkpoint_every": "2", "TrainConfig.log_every": "1", "TrainConfig.eval_batches": "1",
           "DataConfig.seq_len": "32", "DataConfig.batch_size": "8", "ModelConfig.d_model": "32",
           "ModelConfig.d_ff": "64", "TrainConfig.learning_rate": "1e-2", **over}
  files = ["models/tiny.gin", "methods/scone.gin", "runs/cpu_mesh8.gin"]
  return [w for f in files for w in ("--gin_file", f)] + [f"--gin.{k}={v}" for k, v in flags.items()]


@pytest.fixture(scope="module")
def candidates(tiny_scone_run):
  workdir = tiny_scone_run["workdir"]
  return [(workdir, compare.run_key([os.path.join(workdir, "config.gin")], []))]


def test_a_sweep_run_is_reused_only_where_it_is_the_same_run(tiny_scone_run, candidates):
  workdir = tiny_scone_run["workdir"]
  assert compare.find_same_run(candidates, _argv(tiny_scone_run)) == workdir
  # logging and checkpoint intervals change no number, nor does spelling out a default as its value
  assert compare.find_same_run(candidates, _argv(tiny_scone_run, **{"FgramConfig.max_n": "3",
                                                                    "FgramConfig.d_model": "32"})) == workdir
  assert compare.find_same_run(candidates, _argv(tiny_scone_run, **{"TrainConfig.log_every": "7",
                                                                    "TrainConfig.checkpoint_every": "3"})) == workdir
  for change in ({"SEED": "1"}, {"TRAIN_STEPS": str(TINY_STEPS + 1)}, {"TrainConfig.learning_rate": "2e-2"},
                 {"FgramConfig.size": "100"}, {"FgramConfig.num_layers": "2"}, {"ModelConfig.d_ff": "128"},
                 {"MeshConfig.tensor": "1", "MeshConfig.fsdp": "4"}):
    assert compare.find_same_run(candidates, _argv(tiny_scone_run, **change)) is None, change


def test_another_data_directory_with_the_same_tokens_is_the_same_run(tiny_scone_run, candidates, tmp_path):
  import shutil
  copy = str(tmp_path / "data")
  shutil.copytree(tiny_scone_run["data"], copy)
  assert compare.find_same_run(candidates, _argv(tiny_scone_run, DATA_DIR=f"'{copy}'")) == tiny_scone_run["workdir"]


def _result(method, seed, ppl, flops, label=None, with_=None):
  r = {"method": method, "seed": seed, "eval_loss": math.log(ppl), "eval_perplexity": ppl, "resident_params": 10,
       "training_params": 0, "offloaded_entries": 0, "train_flops_per_token": flops, "train_tokens_per_s": 1.0,
       "decode_tokens_per_s": 1.0}
  if label:
    r.update(label=label, equal_flops_with=with_, steps=517)
  return r


def test_equal_flops_baselines_and_the_differences_reported():
  results = [_result("baseline", s, p, 8.0) for s, p in ((0, 235.0), (1, 236.0), (2, 237.0))]
  results += [_result("scone", s, p, 14.0) for s, p in ((0, 220.0), (1, 222.0), (2, 224.0))]
  results += [_result("stem", s, 200.0, 8.0) for s in (0, 1, 2)]
  assert compare.equal_flops_baselines(results, 300) == {"scone": 525}   # floor(300 x 14 / 8); stem: equal
  results += [_result("baseline", s, p, 8.0, "baseline, 525 steps", "scone") for s, p in ((0, 226.0), (1, 227.0),
                                                                                           (2, 228.0))]
  rows = {r["method"]: r for r in compare._aggregate(results)}
  scone = rows["scone"]   # seed by seed: -15, -14, -13 (the seeds' shared spread cancels)
  assert scone["delta_equal_steps"]["mean"] == pytest.approx(-14.0) and scone["delta_equal_steps"]["std"] == (
      pytest.approx(1.0)) and scone["delta_equal_steps"]["lower"] == 3
  assert scone["delta_equal_flops"]["mean"] == pytest.approx(222.0 - 227.0) and scone["equal_flops_baseline"] == (
      "baseline, 525 steps")
  stem = rows["stem"]
  assert stem["delta_equal_flops"]["mean"] == stem["delta_equal_steps"]["mean"] == pytest.approx(200.0 - 236.0)
  assert "delta_equal_steps" not in rows["baseline"] and "delta_equal_steps" not in rows["baseline, 525 steps"]
  table = compare._table_md(list(rows.values()))
  assert "| scone | " in table and "-14.00 ± 1.00 (3/3 lower)" in table and "(3/3 lower; baseline, 525 steps)" in table
