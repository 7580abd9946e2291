"""The A_f work each SCONE run of a sweep executed, measured exactly: every run's own input
pipeline (its RUN/config.gin: the same data order, the same batches) replayed for its steps on the
host, summing the batch feature's `stat_train_only_work` (the packed A_f slots executed and the
prefix-tree nodes needed; methods/scone.py), converted to FLOPs per token as `train` does for MFU.

  .venv/bin/python results/miniature/measure_af_work.py SWEEP/runs/*seed=* > work.jsonl

Prints one JSON line per run: the main model's training FLOPs per token, A_f's planned bound (what
the accounting and the sweep's equal-FLOPs baselines use), its needed and executed FLOPs per
token, and the baseline steps with the run's executed training FLOPs."""
import itertools
import json
import os
import sys

import numpy as np

from scone_jax import experiment
from scone_jax.data import pipeline


def main(workdirs):
  for workdir in workdirs:
    if not os.path.isfile(os.path.join(workdir, "summary.json")):
      continue
    acct = json.load(open(os.path.join(workdir, "summary.json")))["accounting"]
    if not acct.get("training_params"):
      continue   # a baseline: no A_f
    exp = experiment.load([os.path.join(workdir, "config.gin")], [])
    steps = exp.train.steps
    work = np.zeros(4, np.int64)
    for batch in itertools.islice(iter(pipeline.make_dataset(exp.pipeline_spec("train", prefetch=0))), steps):
      work += batch["stat_train_only_work"]
    needed, executed = exp.method.train_only_flops_of(work, steps * exp.data.batch_size * exp.data.seq_len)
    main_flops = acct["train_flops_per_token"] - acct["train_only_flops_per_token"]
    print(json.dumps({"run": workdir, "main": main_flops, "af_planned": acct["train_only_flops_per_token"],
                      "af_needed": needed, "af_executed": executed,
                      "equal_flops_baseline_steps": int(steps * (main_flops + executed) // main_flops)}), flush=True)


if __name__ == "__main__":
  main(sys.argv[1:])
