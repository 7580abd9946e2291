"""`scone-jax demo` (what `make demo` runs): the whole data walk on the embedded corpus.

prepare builtin:python-stdlib -> fgrams build -> fgrams tag -> train the baseline and the same main model with
SCONE on a 2-device (FSDP) CPU mesh -> print both validation perplexities -> export the SCONE
run's f-gram table to a zarr store -> generate a completion with rows read from that store.
Every stage is skipped when its output already exists, so a second `make demo` resumes where the
first stopped.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from scone_jax.cli import main
from scone_jax.errors import UserError

DEVICES = 2   # fake CPU devices; more than the host has cores risks XLA CPU collective stalls
DEMO_PROMPT = "    def __init__(self, "   # completed at the end, f-gram rows read from the exported store


def add_arguments(p: argparse.ArgumentParser) -> None:
  p.add_argument("--out", default="demo_out", help="directory for data, f-grams and runs")
  p.add_argument("--steps", type=int, default=300, help="train steps per model")
  p.add_argument("--fgrams", type=int, default=16384, help="|V_f|")
  p.add_argument("--max_n", type=int, default=4, help="K")


def _stage(name: str) -> None:
  print(f"\n=== {name} ===", flush=True)


def run(args) -> int:
  # A sharded mesh on a CPU host: split it into fake devices before JAX starts.
  if "jax" not in sys.modules:
    from scone_jax.parallel import fake_cpu_devices_flags
    os.environ.setdefault("XLA_FLAGS", fake_cpu_devices_flags(DEVICES))
  out = os.path.abspath(args.out)
  data, fg = os.path.join(out, "data"), os.path.join(out, "fgrams")
  t0 = time.time()
  _stage("prepare: tokenize the embedded corpus (the Python standard library)")
  if not os.path.isfile(os.path.join(data, "meta.json")):
    rc = main(["prepare", "--input", "builtin:python-stdlib", "--out", data, "--vocab_size", "4096"])
    if rc:
      return rc
  else:
    print(f"{data} exists")
  _stage(f"fgrams build: the {args.fgrams:,} most frequent n-grams, n = 2..{args.max_n}")
  if not os.path.isfile(os.path.join(fg, "meta.json")):
    rc = main(["fgrams", "build", "--data", data, "--max_n", str(args.max_n), "--size", str(args.fgrams), "--out", fg])
    if rc:
      return rc
  else:
    print(f"{fg} exists")
  tags = os.path.join(out, "tags")
  _stage("fgrams tag: every position's match length, once, so that training only reads it")
  if not os.path.isfile(os.path.join(tags, "meta.json")):
    rc = main(["fgrams", "tag", fg, "--data", data, "--out", tags])
    if rc:
      return rc
  else:
    print(f"{tags} exists")
  results = {}
  scone = ["--gin_file", "methods/scone.gin", f"--gin.FGRAM_DIR='{fg}'", f"--gin.TAGS_DIR='{tags}'"]
  for name, extra in (("baseline", []), ("scone", scone)):
    _stage(f"train {name} ({args.steps} steps, sharded over {DEVICES} CPU devices)")
    workdir = os.path.join(out, f"run_{name}")
    rc = main(["train", "--gin_file", "models/demo.gin", *extra, "--gin_file", "runs/demo.gin", f"--gin.DATA_DIR='{data}'",
               f"--gin.TRAIN_STEPS={args.steps}", "--workdir", workdir])
    if rc:
      return rc
    results[name] = _final_eval(workdir)
  _stage("result (validation split of the embedded corpus)")
  for name, r in results.items():
    print(f"{name:>9}: validation loss {r['loss']:.4f}, perplexity {r['perplexity']:.2f}")
  if not results:
    raise UserError("no run finished")
  rc = _export_and_generate(out)
  if rc:
    return rc
  print(f"demo finished in {time.time() - t0:.0f} s; runs in {out}")
  return 0


def _export_and_generate(out: str) -> int:
  """A_f over every f-gram of the SCONE run into a zarr store (resumes, or says it is complete),
  then a completion decoded with the f-gram rows read from that store on disk."""
  run, store = os.path.join(out, "run_scone"), os.path.join(out, "store")
  _stage("export: A_f over every f-gram, into a zarr store (the table serving reads)")
  rc = main(["export", "--workdir", run, "--out", store, "--dtype", "bfloat16"])
  if rc:
    return rc
  _stage("generate: greedy completion, f-gram rows from the store on disk")
  print(f"prompt: {DEMO_PROMPT!r}\ncompletion:", flush=True)
  return main(["generate", "--workdir", run, "--store", store, "--tier", "disk", "--prompt", DEMO_PROMPT,
               "--max_new_tokens", "48"])


def _final_eval(workdir: str) -> dict | None:
  from scone_jax.train import metrics  # imports JAX: only after run() has set XLA_FLAGS
  evals = metrics.read(workdir, "validation")
  return evals[-1] if evals else None
