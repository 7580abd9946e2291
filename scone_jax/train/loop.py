"""`scone-jax train`: the training loop (thin: everything heavy is in the jitted step).

Resumes automatically from the newest checkpoint in RUN/checkpoints (state and data iterator), so
re-running the same command after a crash or preemption continues the run exactly. SIGTERM
(preemption notice) saves a checkpoint at the next step boundary and exits cleanly.
"""
from __future__ import annotations

import argparse
import math
import signal
import threading
import time

import gin
import jax
import numpy as np

from scone_jax import __version__, config as C, experiment, parallel, paths
from scone_jax.config import bindings_from_flags, flag_range
from scone_jax.data import pipeline
from scone_jax.errors import UserError
from scone_jax.files import atomic_write_json
from scone_jax.outputs import check_output
from scone_jax.train import drift, evaluate, identity, metrics as M
from scone_jax.train.checkpoint import Checkpoints
from scone_jax.train.optimizer import schedule
from scone_jax.train.state import make_trainer

ACCEPTS_EXTRA = True  # --gin.NAME=VALUE overrides


def add_arguments(p: argparse.ArgumentParser) -> None:
  C.add_gin_arguments(p)
  p.add_argument("--workdir", required=True, help="run directory (checkpoints, metrics, config.gin)")
  p.add_argument("--coordinator_address", default=None, help="multi-host: HOST:PORT of process 0")
  p.add_argument("--num_processes", type=flag_range(1), default=None)
  p.add_argument("--process_id", type=flag_range(0), default=None)
  p.add_argument("--heartbeat_timeout_seconds", type=flag_range(1), default=100,
                 help="multi-host: a process silent this long is declared dead and every other process stops")
  p.add_argument("--startup_timeout_seconds", type=flag_range(1), default=300,
                 help="multi-host: stop with an error if the processes have not all met by then")
  p.add_argument("--quiet", action="store_true", help="print only the final summary")
  p.add_argument("--allow_other_data", action="store_true",
                 help="resume on other data or f-grams than the run recorded (e.g. fine-tuning), on purpose")
  p.add_argument("--stop_after_steps", type=flag_range(1), default=None,
                 help="stop (with a checkpoint) after this many steps of this invocation; the run resumes later")


def _log(msg: str, quiet: bool = False) -> None:
  if jax.process_index() == 0 and not quiet:
    print(msg, flush=True)


def run(args) -> int:
  parallel.initialize_distributed(args.coordinator_address, args.num_processes, args.process_id,
                                  heartbeat_timeout_seconds=args.heartbeat_timeout_seconds,
                                  startup_timeout_seconds=args.startup_timeout_seconds, command="train")
  exp = experiment.load(C.gin_files_of(args), bindings_from_flags(args.extra))
  summary = train(exp, args.workdir, quiet=args.quiet, stop_after=args.stop_after_steps,
                  allow_other_data=args.allow_other_data)
  _log(f"done: step {summary['step']}, validation loss {summary.get('eval_loss', float('nan')):.4f}, "
       f"perplexity {summary.get('eval_perplexity', float('nan')):.2f}")
  return 0


class _Preemption:
  """Turns SIGTERM into a flag the loop checks between steps (`reached(step)`). One process: a
  Python handler. Several: a SIGTERM to any one of them (a preemption notice goes to one host)
  is caught by jax's preemption sync manager, which names the same step to every process, so all
  save that step together (each on its own would call the save's collectives at different steps,
  and mismatch or hang)."""

  def __init__(self):
    self.requested = False
    self._old = None
    self._synchronized = parallel.preemption_synchronized()

  def __enter__(self):
    if threading_is_main() and not self._synchronized:
      self._old = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    self.requested = True

  def reached(self, step: int) -> bool:
    """Whether to save and stop after `step`; with several processes called at every step by all."""
    if self._synchronized:
      from jax.experimental import multihost_utils
      self.requested = self.requested or multihost_utils.reached_preemption_sync_point(step)
    return self.requested

  def __exit__(self, *exc):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)


def threading_is_main() -> bool:
  return threading.current_thread() is threading.main_thread()


def train(exp, workdir: str, *, quiet: bool = False, stop_after: int | None = None,
          allow_other_data: bool = False) -> dict:
  """Runs (or resumes) training to exp.train.steps; returns the final metrics.

  Nothing in RUN is written before the run is accepted: the mesh and batch fit, the inputs are the
  ones the run recorded (train/identity.py; allow_other_data: other data or f-grams on purpose),
  and RUN is not in use by another process (an exclusive lock, held until this call returns)."""
  mesh = parallel.make_mesh(exp.mesh)
  trainer = make_trainer(exp, mesh)
  acct = exp.accounting(trainer.abstract_params, jax.process_count(), trainer.batch_devices)
  for line in acct.lines():
    _log(line, quiet)
  _log(f"mesh: {dict(mesh.shape)} over {jax.device_count()} devices, {jax.process_count()} process(es)", quiet)

  if paths.is_remote(workdir):   # outputs.py reads local directories only; inputs are local, so none overlaps
    paths.check_bucket(workdir, "--workdir")   # the bucket exists: one line, before anything is written
  else:
    check_output(workdir, "run", flag="--workdir", inputs=exp.input_dirs())
  current = exp.identity()
  identity.check(workdir, current, exp.identity_sources(), allow_other_data=allow_other_data)
  with identity.run_lock(workdir):
    return _train(exp, workdir, mesh, trainer, acct, current, quiet=quiet, stop_after=stop_after)


def _train(exp, workdir: str, mesh, trainer, acct, current: dict, *, quiet: bool, stop_after: int | None) -> dict:
  cfg, dcfg = exp.train, exp.data
  data_iter = iter(pipeline.make_dataset(exp.pipeline_spec("train", batch_devices=trainer.batch_devices)))
  ckpt = Checkpoints(workdir, cfg)
  start = ckpt.latest_step()
  changes = {}
  if start is not None:
    changes = drift.check(workdir, gin.operative_config_str(), start)   # a changed model or shape: refused
    state = ckpt.restore(start, trainer.abstract_state(), data_iter)
    _log(f"resumed from step {start}" + (f" with changed {', '.join(changes)}" if changes else ""), quiet)
  else:
    state = trainer.init()
    start = 0
  # Accepted: only now is the run's record rewritten (a refused resume leaves RUN as it was).
  experiment.save_operative_config(workdir, header=[
      f"scone_jax {__version__}, jax {jax.__version__}, {jax.device_count()} devices in {jax.process_count()} "
      f"process(es); resolved from DATA: ModelConfig.vocab_size = {exp.model.vocab_size}"])
  if jax.process_index() == 0:
    identity.write(workdir, current)
    drift.record(workdir, start, changes)
  writer = M.MetricsWriter(workdir)
  peak, peak_src = M.peak_flops()
  _log(f"peak: {peak / 1e9:,.1f} GFLOP/s ({peak_src})", quiet)

  step_fn = None
  work_since = np.zeros(4, np.int64)   # training-only work of the batches since the last log line
  matches_since = None                 # positions given an f-gram's embedding since then (SCONE)
  last: dict = {}
  t_last, tokens_since = time.perf_counter(), 0.0
  step = start
  try:
    with _Preemption() as preempt, jax.set_mesh(mesh):
      while step < cfg.steps:
        local = next(data_iter)
        if "stat_train_only_work" in local:
          work_since = work_since + local["stat_train_only_work"]
        if "stat_fgram_matches" in local:
          matches_since = (matches_since or 0) + int(local["stat_fgram_matches"])
        batch = trainer.global_batch(local, dcfg.batch_size)
        if step_fn is None:
          step_fn = trainer.jit_train_step(local)
        state, m = step_fn(state, batch)
        step += 1
        stopping = preempt.reached(step) or (stop_after is not None and step - start >= stop_after)
        saving = step % cfg.checkpoint_every == 0 or step == cfg.steps or stopping
        # A checkpoint step is logged too, so the per-interval counts (fgram_matches) a resume
        # continues from cover every step up to its checkpoint.
        logging_now = step % cfg.log_every == 0 or step == cfg.steps or step == start + 1 or saving
        if logging_now or saving:
          m = jax.device_get(m)
          _check_finite(cfg, m, step, ckpt)
        if logging_now:
          loss = float(m["loss"])
          now = time.perf_counter()
          tokens_since += dcfg.batch_size * dcfg.seq_len * (step - last.get("step", start))
          dt = now - t_last
          tps = dcfg.batch_size * dcfg.seq_len * (step - last.get("step", start)) / dt if dt > 0 else 0.0
          t_last = now
          flops, extra = acct.train_flops_per_token, {}
          measured = exp.method.train_only_flops_of(work_since * jax.process_count(),
                                                    dcfg.batch_size * dcfg.seq_len * (step - last.get("step", start)))
          if measured is not None and work_since[0] > 0:
            # MFU counts the training-only work that was needed, not the padding executed with it;
            # this process's work stands for every process's (they read statistically equal rows).
            needed, executed = measured
            flops = acct.train_flops_per_token - acct.train_only_flops_per_token + needed
            extra = {"train_only_executed_over_needed": executed / needed}
          work_since = np.zeros(4, np.int64)
          if matches_since is not None:   # this process's batches stand for every process's, as above
            extra["fgram_matches"] = matches_since * jax.process_count()
            matches_since = 0
          values = {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "grad_norm": float(m["grad_norm"]),
                    "learning_rate": float(_lr(cfg, step - 1)), "tokens_per_s": tps,
                    "mfu": tps * flops / peak if peak == peak else float("nan"), **extra}
          writer.write(step, "train", values)
          last = {"step": step, **values}
          _log(f"step {step:>6}  loss {loss:.4f}  ppl {values['perplexity']:.2f}  gnorm {values['grad_norm']:.3f}  "
               f"lr {values['learning_rate']:.2e}  {tps:,.0f} tok/s  mfu {values['mfu']:.1%}", quiet)
        if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:
          ev = evaluate.evaluate(exp, trainer, state.params, max_batches=cfg.eval_batches)
          writer.write(step, "validation", ev)
          _log(f"step {step:>6}  validation loss {ev['loss']:.4f}  ppl {ev['perplexity']:.2f}", quiet)
        if saving:
          writer.flush()   # a remote RUN: the records up to a checkpoint reach RUN before it
          ckpt.save(step, state, data_iter, force=True)
        if stopping:
          ckpt.wait()
          _log(f"{'SIGTERM' if preempt.requested else '--stop_after_steps'}: saved step {step} and stopped", quiet)
          break
    ev = evaluate.evaluate(exp, trainer, state.params, max_batches=cfg.eval_batches)
    writer.write(step, "validation", ev)
    last.update(step=step, eval_loss=ev["loss"], eval_perplexity=ev["perplexity"])
    last["accounting"] = acct.as_dict()
    writer.flush()   # read back below
    last["train_tokens_per_s"] = _mean_train_throughput(workdir)
    sightings = fgram_sightings(workdir)
    if sightings is not None:
      last["fgram_sightings"] = sightings
    last.pop("fgram_matches", None)
    if jax.process_index() == 0 and step >= cfg.steps:
      atomic_write_json(paths.join(workdir, "summary.json"), last, indent=2, sort_keys=True)
    return last
  finally:
    ckpt.close()
    writer.close()
    close = getattr(data_iter, "close", None)
    if close:
      close()


def _check_finite(cfg, m: dict, step: int, ckpt) -> None:
  """Stops before a non-finite state can be logged as progress or checkpointed. With
  TrainConfig.skip_nonfinite_updates the optimizer already skipped such updates."""
  if cfg.skip_nonfinite_updates or not cfg.stop_on_nonfinite:
    return
  loss, gnorm = float(m["loss"]), float(m["grad_norm"])
  if not (math.isfinite(loss) and math.isfinite(gnorm)):
    ckpt.wait()
    good = ckpt.latest_step()
    kept = (f"the last good checkpoint (step {good}) is kept in {ckpt.directory}" if good is not None
            else "no checkpoint was written before it")
    if step == 1:   # the very first step: the model has not moved yet, so the input is the suspect
      raise UserError(f"non-finite loss {loss} (grad norm {gnorm}) at the first step, before any update: check "
                      "the data (`scone-jax prepare` verifies token ids) and ModelConfig (dtype, init_std)")
    raise UserError(f"non-finite loss {loss} (grad norm {gnorm}) at step {step}; {kept}; lower the learning rate, or "
                    "set TrainConfig.skip_nonfinite_updates=True, and resume")


def _mean_train_throughput(workdir: str) -> float:
  """Mean tokens/s over the logged steps of the run, leaving out each invocation's first (compile)."""
  values, prev_step = [], None
  for r in M.read(workdir, "train"):
    if prev_step is not None and r["step"] > prev_step and "tokens_per_s" in r:
      values.append(r["tokens_per_s"])
    prev_step = r["step"]
  return sum(values) / len(values) if values else 0.0


def fgram_sightings(workdir: str) -> int | None:
  """Training positions whose input embedding was an f-gram's (its longest match, n >= 2), summed
  over the run from the `fgram_matches` of its train records; None for a run without f-grams.
  Each invocation's first record is at its start step + 1 and counts that one batch, so a record
  at step s drops every earlier record at step >= s (logged past the checkpoint a resume started
  from, before a crash): the sum counts each trained step once, as the resumed run trained it."""
  by_step: dict[int, int] = {}
  for r in M.read(workdir, "train"):
    if "fgram_matches" not in r:
      continue
    for s in [s for s in by_step if s >= r["step"]]:
      del by_step[s]
    by_step[r["step"]] = int(r["fgram_matches"])
  return sum(by_step.values()) if by_step else None


def _lr(cfg, step: int) -> float:
  return float(schedule(cfg)(step))
