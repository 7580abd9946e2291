"""`scone-jax sweep`: the grid, the emitted commands, and a tiny local sweep's table and plots."""
from __future__ import annotations

import itertools
import json
import os
import shlex

import pytest

from scone_jax.cli import main
from tests.helpers import make_data


def test_emit_lists_builds_then_every_grid_point(tmp_path, capsys):
  data, _ = make_data(str(tmp_path / "d"), docs=20)
  assert main(["sweep", "--data", data, "--out", str(tmp_path / "sw"), "--sizes", "8,16", "--fgram_layers", "1,2",
               "--max_n", "3,4", "--seeds", "0", "--baseline_seeds", "0,1", "--main_seeds", "1", "--emit"]) == 0
  lines = [shlex.split(l) for l in capsys.readouterr().out.strip().splitlines()]
  builds = [l for l in lines if l[1:3] == ["fgrams", "build"]]
  trains = [l for l in lines if l[1] == "train"]
  assert [l[l.index("--max_n") + 1] for l in builds] == ["3", "4"]
  assert all(l[l.index("--size") + 1] == "16" for l in builds)
  names = [os.path.basename(l[l.index("--workdir") + 1]) for l in trains]
  expected = ["baseline_seed0", "baseline_seed1"] + [
      f"scone_k{k}_v{v}_af{a}_seed0" for k, v, a in itertools.product((3, 4), (8, 16), (1, 2))] + ["scone_k3_v16_af1_seed1"]
  assert names == expected
  scone = trains[2]
  assert "--gin.FgramConfig.size=8" in scone and "--gin.FgramConfig.num_layers=1" in scone
  assert any(w.startswith("--gin.FGRAM_DIR=") and w.endswith("fgrams_k3'") for w in scone)


@pytest.mark.slow
def test_tiny_sweep_writes_table_and_plots(tmp_path, capsys):
  data, _ = make_data(str(tmp_path / "d"), docs=60)
  out = str(tmp_path / "sw")
  argv = ["sweep", "--data", data, "--out", out, "--gin_file", "models/tiny.gin", "--gin_file", "runs/cpu.gin", "--sizes", "10,30",
          "--fgram_layers", "1", "--max_n", "3", "--min_count", "2", "--seeds", "0", "--baseline_seeds", "0",
          "--main_seeds", "", "--steps", "2", "--binding", "DataConfig.seq_len=32", "--binding", "TrainConfig.eval_batches=1"]
  assert main(argv) == 0
  rows = json.load(open(os.path.join(out, "table.json")))
  assert [r["run"] for r in rows] == ["baseline_seed0", "scone_k3_v10_af1_seed0", "scone_k3_v30_af1_seed0"]
  for r in rows:
    summary = json.load(open(os.path.join(out, "runs", r["run"], "summary.json")))
    assert r["perplexity"] == summary["eval_perplexity"]
  d = rows[0]["resident_params"]
  assert all(r["resident_params"] == d for r in rows)   # same accelerator-resident main model
  assert rows[1]["offloaded_entries"] * 3 == rows[2]["offloaded_entries"]  # |V_f| x d
  assert rows[0]["training_params"] == 0 < rows[1]["training_params"] == rows[2]["training_params"]
  for png in ("ppl_vs_fgrams.png", "ppl_vs_fgram_model.png"):
    assert open(os.path.join(out, png), "rb").read(8) == b"\x89PNG\r\n\x1a\n"
  # A second call finds every run finished and only rewrites the table.
  capsys.readouterr()
  assert main(argv) == 0
  assert capsys.readouterr().out.count("done before") == 3
