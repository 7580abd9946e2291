"""The paper's run settings (experiments/runs/paper_*.gin), the learning-rate schedules, and the
FLOP-matched recipe `scone-jax describe` computes from the accounting."""
from __future__ import annotations

import dataclasses
import math

import pytest

from scone_jax.commands import describe
from scone_jax.config import TrainConfig
from scone_jax.errors import UserError
from scone_jax.train import aot
from scone_jax.train.optimizer import schedule


def expected_lr(cfg: TrainConfig, step: int) -> float:
  """The schedules written out by hand."""
  peak, end, w = cfg.learning_rate, cfg.learning_rate * cfg.min_lr_ratio, cfg.warmup_steps
  if step < w:
    return peak * step / w
  frac = (step - w) / (cfg.steps - w)
  if cfg.schedule == "linear":
    return peak + (end - peak) * frac
  return end + (peak - end) * 0.5 * (1 + math.cos(math.pi * frac))


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_schedules_follow_their_formulas(kind):
  cfg = dataclasses.replace(TrainConfig(), steps=1000, warmup_steps=100, learning_rate=4e-4, min_lr_ratio=0.1,
                            schedule=kind)
  lr = schedule(cfg)
  for step in (0, 1, 50, 99, 100, 101, 400, 550, 999, 1000):
    assert float(lr(step)) == pytest.approx(expected_lr(cfg, step), rel=1e-5, abs=1e-12), step
  assert float(lr(400)) != pytest.approx(expected_lr(dataclasses.replace(
      cfg, schedule="linear" if kind == "cosine" else "cosine"), 400), rel=1e-3)   # the two differ


def test_an_unknown_schedule_is_one_line():
  from scone_jax.config import check_fields
  with pytest.raises(UserError, match="TrainConfig.schedule='step' is not one of cosine, linear"):
    check_fields(dataclasses.replace(TrainConfig(), schedule="step"))


def test_the_paper_run_files_hold_the_paper_settings():
  web = aot.load_experiment(["models/paper_webtext_d1536_l12.gin", "runs/paper_webtext_v5p_256.gin"], [])
  assert (web.data.seq_len, web.data.batch_size) == (1024, 512)
  t = web.train
  assert (t.learning_rate, t.schedule, t.weight_decay, t.b1, t.b2, t.min_lr_ratio) == (2e-4, "cosine", 0.1, 0.9, 0.95, 0.1)
  assert t.steps * 512 * 1024 == pytest.approx(80e9, rel=1e-5)   # 80B tokens
  olmo = aot.load_experiment(["models/paper_olmo_d2048_l18.gin", "runs/paper_olmo_v5p_256.gin"], [])
  assert (olmo.data.seq_len, olmo.data.batch_size) == (2048, 2048)
  t = olmo.train
  assert (t.learning_rate, t.schedule, t.warmup_steps, t.eps, t.weight_decay) == (4e-4, "linear", 2000, 1e-5, 0.1)
  assert t.learning_rate * t.min_lr_ratio == pytest.approx(4e-5)


def test_describe_gives_the_flop_matched_steps():
  files = ["models/paper_webtext_d1536_l12.gin", "methods/scone_webtext_fg10m.gin", "runs/paper_webtext_v5p_256.gin"]
  scone = describe.describe(files, [], "v5p-256")
  base = describe.describe([files[0], files[2]], [], "v5p-256")
  f_scone, f_base = scone["accounting"]["train_flops_per_token"], base["accounting"]["train_flops_per_token"]
  assert f_scone > f_base   # A_f trains alongside: more FLOPs per token
  eq = scone["equal_flops"]
  assert eq["baseline_train_flops_per_token"] == f_base and eq["baseline_steps"] == 152588
  assert eq["steps"] == math.floor(152588 * f_base / f_scone) < 152588
  assert eq["steps"] * f_scone <= 152588 * f_base < (eq["steps"] + 1) * f_scone   # equal FLOPs, to a step
  assert base["equal_flops"]["steps"] == 152588   # the baseline matches itself


@pytest.mark.slow
def test_bench_train_runs_its_alternating_rounds(capsys, tiny_corpus, tiny_fgrams):
  """On a real batch (the tiny corpus and its f-grams) and on the synthetic one; without data it
  says what to do."""
  from scone_jax.cli import main
  tiny = ["--d_model", "32", "--d_ff", "64", "--num_heads", "2", "--seq_len", "16", "--batch_size", "8", "--steps", "1"]
  assert main(["bench", "train", *tiny, "--data", tiny_corpus, "--fgrams", tiny_fgrams]) == 0
  out = capsys.readouterr().out
  assert "median of 5 alternating rounds of 1 steps" in out and "A_f token slots executed" in out
  assert f"batches of {tiny_corpus} (8 x 16)" in out and "prefix-tree nodes" in out
  assert main(["bench", "train", *tiny, "--synthetic", "--vocab_size", "64"]) == 0
  assert "batches of" not in capsys.readouterr().out
  assert main(["bench", "train", *tiny, "--data", "/nonexistent"]) == 2
  err = capsys.readouterr().err.strip()
  assert "--data '/nonexistent' has no meta.json" in err and len(err.splitlines()) == 1
  import jax
  devices = jax.local_device_count()
  if devices > 1:   # a batch the devices cannot split (the suite's default 8 CPU devices)
    assert main(["bench", "train", *tiny[:-4], "--batch_size", str(devices + 1), "--synthetic"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--batch_size" in err and "not divisible" in err and len(err.splitlines()) == 1
