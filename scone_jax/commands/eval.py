"""`scone-jax eval`: validation loss and perplexity of a run's checkpoint.

  --store STORE   rows of an exported f-gram table (scone-jax export) in place of A_f (SCONE);
                  refused unless it was exported from this very checkpoint and f-gram file
  --store none    the method's own modules (the default)
"""
from __future__ import annotations

import argparse
import json

import jax

from scone_jax.config import flag_range
from scone_jax.errors import UserError
from scone_jax.export.manifest import identity_of
from scone_jax.serve.store import TIERS, open_store
from scone_jax.train.evaluate import evaluate
from scone_jax.train.restore import load_run


def add_arguments(p: argparse.ArgumentParser) -> None:
  p.add_argument("--workdir", required=True, help="a run directory written by `scone-jax train`")
  p.add_argument("--data", default=None, help="data directory (default: the run's DATA_DIR)")
  p.add_argument("--split", default="validation", choices=("train", "validation"))
  p.add_argument("--max_batches", type=flag_range(0), default=0, help="0 = the whole split")
  p.add_argument("--step", type=flag_range(0), default=None, help="checkpoint step (default: newest)")
  p.add_argument("--store", default=None, help="f-gram embedding store (SCONE runs; a path or kvstore URL "
                 "written by `scone-jax export`); 'none' = A_f")
  p.add_argument("--tier", default="ram", choices=TIERS, help="how --store is read")
  p.add_argument("--allow_other_data", action="store_true",
                 help="use the run although its DATA_DIR or f-gram file changed since it trained (on purpose)")
  p.add_argument("--format", default="text", choices=("text", "json"))


def run(args) -> int:
  loaded = load_run(args.workdir, step=args.step, data_dir=args.data, allow_other_data=args.allow_other_data)
  store = None
  if args.store not in (None, "", "none"):
    store = open_store(args.store, args.tier, expected=identity_of(loaded))
  result = evaluate(loaded.exp, loaded.trainer, loaded.params, split=args.split, max_batches=args.max_batches,
                    store=store)
  if result["tokens"] == 0:   # a loss over nothing is not a perfect score
    raise UserError(f"the {args.split} split of {loaded.exp.data.data_dir!r} has no tokens to evaluate: "
                    "pass another --split or --data")
  result = {"loss": result["loss"], "perplexity": result["perplexity"], "tokens": int(result["tokens"])}
  if jax.process_index() == 0:
    if args.format == "json":
      print(json.dumps(result))
    else:
      print(f"step {loaded.step}  {args.split} loss {result['loss']:.4f}  perplexity {result['perplexity']:.3f}  "
            f"({result['tokens']:,} tokens)")
  return 0
