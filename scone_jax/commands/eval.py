"""`scone-jax eval`: a run's checkpoint on held-out corpora and zero-shot multiple-choice tasks.

  --data [NAME=]DIR      a corpus prepared with the run's tokenizer (repeatable; NAME defaults to
                         the directory's basename): loss, perplexity, tokens and bits per byte of
                         its --split, one ordered pass; then the unweighted mean over the corpora
  --task [NAME=]mc:FILE  a multiple-choice file (repeatable; NAME defaults to the file's name
                         without .jsonl; train/tasks.py): acc, acc_norm, examples
  neither                the run's own DATA_DIR, as --data would
  --store STORE          rows of an exported f-gram table (scone-jax export) in place of A_f (SCONE),
                         for the corpora and the tasks; refused unless it was exported from this very
                         checkpoint and f-gram file
  --store none           the method's own modules (the default)
Bits per byte (docs/METHODS.md 5) needs the split's UTF-8 byte count from meta.json (`num_bytes`,
recorded by `prepare` from text) and a whole pass: it is null ("n/a") after a --max_batches pass
that stopped early, and for pretokenized data.
Output: text, or with --format json one object: "step", "split", "corpora" {NAME: {"loss",
"perplexity", "tokens", "bytes", "bits_per_byte", "complete"}}, "average" {"loss", "perplexity",
"bits_per_byte"}, "tasks" {NAME: {"examples", "acc", "acc_norm", "truncated"}}; with exactly one
corpus its "loss", "perplexity", "tokens" and "bits_per_byte" also at the top level (the output of
the one-corpus eval before --data NAME=DIR existed).
"""
from __future__ import annotations

import argparse
import json
import os
import re

import jax

from scone_jax import config as C, experiment
from scone_jax.config import flag_range
from scone_jax.data import shards
from scone_jax.data.tokenizer import open_data_tokenizer
from scone_jax.errors import UserError
from scone_jax.export.manifest import identity_of
from scone_jax.serve.store import TIERS, open_store
from scone_jax.train import identity, tasks
from scone_jax.train.evaluate import evaluate_corpus
from scone_jax.train.restore import load_run

NAME = re.compile(r"^([A-Za-z0-9_.-]+)=(.+)$")


def add_arguments(p: argparse.ArgumentParser) -> None:
  p.add_argument("--workdir", required=True, help="a run directory written by `scone-jax train`")
  p.add_argument("--data", action="append", default=[], metavar="[NAME=]DIR",
                 help="a held-out corpus written by `scone-jax prepare` with the run's tokenizer (repeatable; NAME "
                      "defaults to DIR's basename). Without --data and --task: the run's DATA_DIR. Reports each "
                      "corpus's loss, perplexity, tokens and bits per byte, and their 'average': the unweighted "
                      "mean over the corpora of each metric (not weighted by tokens)")
  p.add_argument("--task", action="append", default=[], metavar="[NAME=]mc:FILE.jsonl",
                 help="zero-shot multiple choice (repeatable): one JSON object a line, "
                      f"{tasks.FORMAT}; reports acc, acc_norm (log-likelihood per UTF-8 byte of the choice) "
                      "and the number of examples")
  p.add_argument("--split", default="validation", choices=("train", "validation"), help="the split of every --data")
  p.add_argument("--max_batches", type=flag_range(0), default=0,
                 help="0 = the whole split; a pass that stops early reports no bits per byte")
  p.add_argument("--step", type=flag_range(0), default=None, help="checkpoint step (default: newest)")
  p.add_argument("--store", default=None, help="f-gram embedding store (SCONE runs; a path or kvstore URL "
                 "written by `scone-jax export`); 'none' = A_f")
  p.add_argument("--tier", default="ram", choices=TIERS, help="how --store is read")
  p.add_argument("--allow_other_data", action="store_true",
                 help="use the run although its DATA_DIR or f-gram file changed since it trained (on purpose)")
  p.add_argument("--format", default="text", choices=("text", "json"))


def _split_name(value: str) -> tuple[str | None, str]:
  """NAME=REST -> (NAME, REST); a value that is an existing path, or has no NAME=, is unnamed."""
  m = NAME.match(value)
  if m and not os.path.exists(value):
    return m.group(1), m.group(2)
  return None, value


def _unique(items: list[tuple[str, str]], flag: str, form: str) -> list[tuple[str, str]]:
  seen: dict[str, str] = {}
  for name, path in items:
    if name in seen:
      raise UserError(f"{flag} name {name!r} is given twice ({seen[name]!r} and {path!r}): name them apart "
                      f"with {flag} {form}")
    seen[name] = path
  return items


def _corpora(values: list[str]) -> list[tuple[str, str]]:
  out = []
  for value in values:
    name, path = _split_name(value)
    out.append((name or os.path.basename(os.path.normpath(path)) or "data", path))
  return _unique(out, "--data", "NAME=DIR")


def _tasks(values: list[str]) -> list[tuple[str, str]]:
  out = []
  for value in values:
    name, spec = _split_name(value)
    if not spec.startswith("mc:") or not spec[3:]:
      raise UserError(f"--task {value!r} is not a task: pass mc:FILE.jsonl (zero-shot multiple choice), "
                      "optionally named NAME=mc:FILE.jsonl")
    path = spec[3:]
    base = os.path.basename(path)
    out.append((name or (base[:-len(".jsonl")] if base.endswith(".jsonl") else base) or "mc", path))
  return _unique(out, "--task", "NAME=mc:FILE")


def _run_data_dir(workdir: str) -> str | None:
  """The run's own DATA_DIR (RUN/config.gin), or None when it cannot be read (load_run says why)."""
  path = os.path.join(workdir, "config.gin")
  if not os.path.isfile(path):
    return None
  try:
    experiment.parse([path], [])
    return C.build(C.DataConfig).data_dir or None
  except UserError:
    return None


def _tokenizer_error(name: str, path: str, what: str) -> UserError:
  return UserError(f"--data {name}={path!r} was prepared with {what}: re-run `scone-jax prepare` on its "
                   "corpus with the run's tokenizer (--vocab or --tokenizer: the file in the run's DATA_DIR)")


def _check_corpus(name: str, path: str, meta: shards.DataMeta, run_meta: shards.DataMeta) -> None:
  if meta.tokenizer_sha256 != run_meta.tokenizer_sha256:
    raise _tokenizer_error(name, path, f"another tokenizer (sha256 {meta.tokenizer_sha256[:16]}, the run's "
                                       f"{run_meta.tokenizer_sha256[:16]})")
  ours = (meta.vocab_size, meta.bos_id, meta.eos_id)
  theirs = (run_meta.vocab_size, run_meta.bos_id, run_meta.eos_id)
  if ours != theirs:
    raise _tokenizer_error(name, path, f"another vocabulary (vocab_size, bos, eos {ours}, the run's {theirs})")


def run(args) -> int:
  corpora = _corpora(args.data)
  task_files = _tasks(args.task)
  examples = {name: tasks.read_mc(path) for name, path in task_files}   # every file checked before the restore
  metas = {name: shards.load_meta(path) for name, path in corpora}
  recorded = (identity.read(args.workdir) or {}).get("tokenizer_sha256") if os.path.isdir(args.workdir) else None
  for name, path in corpora:   # before the restore, against the run's recorded tokenizer
    if recorded and metas[name].tokenizer_sha256 != recorded:
      raise _tokenizer_error(name, path, f"another tokenizer (sha256 {metas[name].tokenizer_sha256[:16]}, the "
                                         f"run's {recorded[:16]})")
  data_dir = None
  if corpora:   # the run's own DATA when it is there (SCONE checks its f-grams against it), else the first corpus
    own = _run_data_dir(args.workdir)
    data_dir = own if own and os.path.isfile(os.path.join(own, shards.META)) else corpora[0][1]
  loaded = load_run(args.workdir, step=args.step, data_dir=data_dir, allow_other_data=args.allow_other_data)
  exp = loaded.exp
  for name, path in corpora:
    _check_corpus(name, path, metas[name], exp.data_meta)
    if exp.data.verify_shards and os.path.abspath(path) != os.path.abspath(exp.data.data_dir):
      shards.verify_shards(path, (args.split,))
  store = None
  if args.store not in (None, "", "none"):
    store = open_store(args.store, args.tier, expected=identity_of(loaded))
  if not corpora and not task_files:
    corpora = [(os.path.basename(os.path.normpath(exp.data.data_dir)) or "data", None)]

  results = {}
  for name, path in corpora:
    r = evaluate_corpus(exp, loaded.trainer, loaded.params, split=args.split, max_batches=args.max_batches,
                        data_dir=path, store=store)
    if r["tokens"] == 0:   # a loss over nothing is not a perfect score
      raise UserError(f"the {args.split} split of {path or exp.data.data_dir!r} has no tokens to evaluate: "
                      "pass another --split or --data")
    results[name] = {"loss": r["loss"], "perplexity": r["perplexity"], "tokens": int(r["tokens"]),
                     "bytes": r["bytes"], "bits_per_byte": r["bits_per_byte"], "complete": r["complete"]}
  task_results = {}
  if task_files:
    tokenizer = open_data_tokenizer(exp.data.data_dir)   # the run's (every --data was checked against it)
    scorer = tasks.Scorer(exp, loaded.trainer, loaded.params, store=store)   # one compile per shape for all tasks
    for name, _ in task_files:
      r = scorer.score_mc(tokenizer, examples[name])
      task_results[name] = {k: r[k] for k in ("examples", "acc", "acc_norm", "truncated")}

  out = {"step": loaded.step, "split": args.split}
  if results:
    out["corpora"] = results
    out["average"] = average(results)
    if len(results) == 1:
      only = next(iter(results.values()))
      out.update({k: only[k] for k in ("loss", "perplexity", "tokens", "bits_per_byte")})
  if task_results:
    out["tasks"] = task_results
  if jax.process_index() == 0:
    print(json.dumps(out) if args.format == "json" else format_text(out))
  return 0


def average(results: dict) -> dict:
  """The unweighted mean over corpora of loss, perplexity and bits per byte (None if any corpus
  has none)."""
  n = len(results)
  out = {k: sum(r[k] for r in results.values()) / n for k in ("loss", "perplexity")}
  bpb = [r["bits_per_byte"] for r in results.values()]
  out["bits_per_byte"] = None if any(b is None for b in bpb) else sum(bpb) / n
  return out


def _bpb(value) -> str:
  return "n/a" if value is None else f"{value:.4f}"


def format_text(out: dict) -> str:
  lines = [f"step {out['step']}  {out['split']}"]
  corpora = out.get("corpora", {})
  width = max([len(n) for n in list(corpora) + list(out.get("tasks", {}))] + [7])
  for name, r in corpora.items():
    size = f", {r['bytes']:,} bytes" if r["bytes"] is not None else ""
    partial = "" if r["complete"] else ", partial pass"
    lines.append(f"  {name:<{width}}  loss {r['loss']:.4f}  perplexity {r['perplexity']:.3f}  "
                 f"bits/byte {_bpb(r['bits_per_byte'])}  ({r['tokens']:,} tokens{size}{partial})")
  if len(corpora) > 1:
    a = out["average"]
    lines.append(f"  {'average':<{width}}  loss {a['loss']:.4f}  perplexity {a['perplexity']:.3f}  "
                 f"bits/byte {_bpb(a['bits_per_byte'])}  (unweighted mean of {len(corpora)} corpora)")
  for name, r in out.get("tasks", {}).items():
    cut = f", {r['truncated']} truncated" if r["truncated"] else ""
    lines.append(f"  {name:<{width}}  acc {r['acc']:.4f}  acc_norm {r['acc_norm']:.4f}  "
                 f"({r['examples']:,} examples{cut})")
  return "\n".join(lines)
