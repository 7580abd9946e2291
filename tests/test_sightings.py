"""F-gram sightings: the training positions whose input embedding was an f-gram's, summed over a
run into RUN/summary.json (`fgram_sightings`; results/ states sightings per f-gram with it)."""
from __future__ import annotations

import itertools
import json
import os

from scone_jax import experiment
from scone_jax.data import pipeline
from scone_jax.train import loop, metrics
from tests.helpers import TINY_STEPS


def _write(workdir, records):
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, metrics.METRICS_FILE), "w") as f:
    for step, n in records:
      f.write(json.dumps({"step": step, "split": "train", "time": 0.0, "loss": 1.0, "fgram_matches": n}) + "\n")
    f.write(json.dumps({"step": records[-1][0], "split": "validation", "time": 0.0, "loss": 1.0}) + "\n")


def test_a_resume_counts_each_trained_step_once(tmp_path):
  # Logged every 2 steps from step 1 on; killed after logging step 6; resumed from the checkpoint
  # of step 4 (first record at 5, one batch), then logged 6 and 8.
  _write(tmp_path, [(1, 10), (2, 20), (4, 40), (6, 60), (5, 5), (6, 6), (8, 80)])
  assert loop.fgram_sightings(str(tmp_path)) == 10 + 20 + 40 + 5 + 6 + 80
  _write(tmp_path / "plain", [(1, 1), (3, 2), (5, 3)])
  assert loop.fgram_sightings(str(tmp_path / "plain")) == 6


def test_a_baseline_run_has_no_sightings(tmp_path):
  with open(tmp_path / metrics.METRICS_FILE, "w") as f:
    f.write(json.dumps({"step": 1, "split": "train", "time": 0.0, "loss": 1.0}) + "\n")
  assert loop.fgram_sightings(str(tmp_path)) is None


def test_the_summary_counts_the_matched_positions_of_the_batches_trained(tiny_scone_run):
  """Independent count: the run's first TINY_STEPS training batches, read again from the
  pipeline its config.gin describes, and their positions with a match of n >= 2 tokens."""
  workdir = tiny_scone_run["workdir"]
  with open(os.path.join(workdir, "summary.json")) as f:
    summary = json.load(f)
  exp = experiment.load([os.path.join(workdir, "config.gin")], [])
  batches = itertools.islice(iter(pipeline.make_dataset(exp.pipeline_spec("train", prefetch=0))), TINY_STEPS)
  expected = sum(int(((b["match_len"] >= 2) & (b["segment_ids"] > 0)).sum()) for b in batches)
  assert expected > 0
  assert summary["fgram_sightings"] == expected
