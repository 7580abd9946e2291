"""`scone-jax eval` and the in-loop evaluation: token-weighted loss and perplexity on a split."""
from __future__ import annotations

import argparse
import json
import math
import os

from scone_jax.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
  p.add_argument("--workdir", required=True, help="a run directory written by `scone-jax train`")
  p.add_argument("--data", default=None, help="data directory (default: the run's DATA_DIR)")
  p.add_argument("--split", default="validation", choices=("train", "validation"))
  p.add_argument("--max_batches", type=int, default=0, help="0 = the whole split")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest)")
  p.add_argument("--store", default=None, help="f-gram embedding store (SCONE runs; a path or kvstore URL "
                 "written by `scone-jax export`); 'none' = A_f")
  p.add_argument("--tier", default="ram", choices=("ram", "disk", "remote"), help="how --store is read")
  p.add_argument("--format", default="text", choices=("text", "json"))


def evaluate(exp, trainer, params, *, split: str = "validation", max_batches: int = 0,
             data_dir: str | None = None, store=None) -> dict:
  """{"loss", "perplexity", "tokens"} over one ordered pass of `split` (or its first batches).
  store: an opened f-gram store (serve.store) whose rows replace A_f (SCONE runs)."""
  import jax
  from scone_jax.data import pipeline
  dcfg = exp.data
  process_rows = (dcfg.eval_batch_size or dcfg.batch_size) // jax.process_count()
  batch_features = exp.batch_features(jax.process_index(), trainer.batch_devices, process_rows)
  if store is not None:
    from scone_jax.serve.lookup import StoreRows
    u = exp.max_unique(process_rows, trainer.batch_devices)
    batch_features = (StoreRows(store, u, offset=jax.process_index() * u),)
  spec = pipeline.PipelineSpec(
      data_dir or dcfg.data_dir, split, dcfg.seq_len, dcfg.eval_batch_size or dcfg.batch_size,
      process_index=jax.process_index(), process_count=jax.process_count(), prefetch=0, shuffle=False,
      row_features=exp.row_features(), batch_features=batch_features)
  total, tokens, step_fn = 0.0, 0.0, None
  with jax.set_mesh(trainer.mesh):
    for i, local in enumerate(pipeline.eval_batches(spec)):
      if max_batches and i >= max_batches:
        break
      if step_fn is None:
        step_fn = trainer.jit_eval_step(local)
      out = jax.device_get(step_fn(params, trainer.global_batch(local, spec.global_batch)))
      total += float(out["loss_sum"])
      tokens += float(out["tokens"])
  loss = total / max(tokens, 1.0)
  return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": tokens}


def run(args) -> int:
  import jax
  from scone_jax import experiment, parallel
  from scone_jax.train.checkpoint import Checkpoints
  from scone_jax.train.state import Trainer
  config_path = os.path.join(args.workdir, "config.gin")
  if not os.path.isfile(config_path):
    raise UserError(f"{config_path!r} does not exist: --workdir must be a run directory written by `scone-jax train`")
  exp = experiment.load([config_path], [], data_dir=args.data)
  mesh = parallel.make_mesh(exp.mesh)
  trainer = Trainer(exp.model, exp.train, mesh, exp.build_model)
  ckpt = Checkpoints(args.workdir, exp.train, read_only=True)
  step = args.step if args.step is not None else ckpt.latest_step()
  if step is None:
    raise UserError(f"no checkpoint in {ckpt.directory!r}: train first")
  use_store = args.store not in (None, "none")
  if use_store and exp.fgram_vocab is None:
    raise UserError("--store needs a SCONE run and an exported store (scone-jax export)")
  state = ckpt.restore(step, trainer.abstract_state())
  ckpt.close()
  store = None
  if use_store:
    from scone_jax.export.run import LoadedRun
    from scone_jax.serve.store import open_store
    identity = LoadedRun(args.workdir, exp, trainer, state.params, step).identity()
    store = open_store(args.store, args.tier, expected=identity)
  result = evaluate(exp, trainer, state.params, split=args.split, max_batches=args.max_batches, store=store)
  result = {"loss": result["loss"], "perplexity": result["perplexity"], "tokens": int(result["tokens"])}
  if jax.process_index() == 0:
    if args.format == "json":
      print(json.dumps(result))
    else:
      print(f"step {step}  {args.split} loss {result['loss']:.4f}  perplexity {result['perplexity']:.3f}  "
            f"({result['tokens']:,} tokens)")
  return 0
