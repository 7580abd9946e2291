"""Running Beam pipelines: the one --beam_args flag, the default runner, and a Dask runner whose
stages keep a bounded number of partitions.

--beam_args is one string of Beam pipeline options (shell-split). Without a --runner in it the
FnApiRunner runs with worker processes (offline: it never downloads a runner binary), its SDK
harness logging at ERROR and its forwarded warnings hidden (else every run prints some forty
INFO and WARNING lines of the workers; quiet_worker_logs). `--runner=DaskRunner`
names scone_jax.fgram.beam_dask.DaskRunner; Beam's own is its full class path.

Why our DaskRunner. Beam 2.77's DaskRunner turns Flatten into a concatenation of the inputs'
partitions and GroupByKey into a Dask bag groupby with as many partitions as its input, so the
partition count of a stage is the sum over every path into it. The counting graph joins by
Flatten + GroupByKey about fifteen times: at 2 partitions per input, 10,873 tasks for 10M tokens,
most of them tiny shuffle splits, and 13.6 s against 6.3 s. Ours is Beam's runner with one
change: a Flatten's output is repartitioned (neighbouring partitions concatenated, no shuffle)
down to --dask_npartitions when it has more, so every stage has at most that many partitions
(267 tasks on the same input). Nothing else differs, so results are Beam's.
"""
from __future__ import annotations

import logging
import os
import shlex

from scone_jax.errors import UserError

DASK_RUNNER = "scone_jax.fgram.beam_dask.DaskRunner"
DEFAULT_BEAM_ARGS = ["--runner=FnApiRunner", "--direct_running_mode=multi_processing",
                     f"--direct_num_workers={max(1, min(8, os.cpu_count() or 1))}",
                     "--default_sdk_harness_log_level=ERROR"]
RUNNER_ALIASES = {"DaskRunner": DASK_RUNNER}
BEAM_ARGS_HELP = ("Beam pipeline options as one string, e.g. '--runner=DaskRunner --dask_client_address=HOST:PORT' "
                  f"(default: {' '.join(DEFAULT_BEAM_ARGS)})")


def add_beam_args(parser) -> None:
  """Adds --beam_args to an argparse parser (fgrams build, fgrams tag)."""
  parser.add_argument("--beam_args", default="", help=BEAM_ARGS_HELP)


def parse_beam_args(text: str | list[str] | tuple[str, ...] | None) -> list[str]:
  """--beam_args as Beam's argv: shell-split, DEFAULT_BEAM_ARGS when no --runner is named, and
  short runner names Beam does not know (DaskRunner) as their full class path."""
  if isinstance(text, str) or text is None:
    try:
      args = shlex.split(text or "")
    except ValueError as e:
      raise UserError(f"--beam_args {text!r} cannot be split like a shell line ({e})") from e
  else:
    args = list(text)
  out, named = [], False
  for i, a in enumerate(args):
    if a == "--runner" or a.startswith("--runner="):
      named = True
      if a.startswith("--runner="):
        name = a.split("=", 1)[1]
        a = "--runner=" + RUNNER_ALIASES.get(name, name)
    elif i > 0 and args[i - 1] == "--runner":
      a = RUNNER_ALIASES.get(a, a)
    out.append(a)
  return out if named else DEFAULT_BEAM_ARGS + out


def uses_dask(args: list[str]) -> bool:
  return any(a.endswith((DASK_RUNNER, "dask_runner.DaskRunner")) for a in args)


def with_dask_partitions(args: list[str], num_items: int) -> list[str]:
  """args plus --dask_npartitions when the Dask runner is named and no partitioning is given:
  one partition per worker thread of the cluster (the runner's own default puts up to 128
  created elements, here all shards, in one task), at most num_items."""
  if not uses_dask(args) or any(a.startswith(("--dask_npartitions", "--dask_partition_size")) for a in args):
    return args
  address = next((a.split("=", 1)[1] for a in args if a.startswith("--dask_client_address=")), None)
  threads = os.cpu_count() or 1
  if address:
    from dask.distributed import Client
    with Client(address, timeout=30) as client:
      threads = sum(client.nthreads().values()) or 1
  return args + [f"--dask_npartitions={max(1, min(num_items, threads))}"]


def quiet_worker_logs() -> None:
  """The FnApi runner forwards its workers' log lines through this process's job-service logger,
  warnings included (each worker warns that it has no staging directory, which a local run never
  has): only its errors are shown."""
  logging.getLogger("apache_beam.runners.portability.local_job_service").setLevel(logging.ERROR)


def run(pipeline_result) -> None:
  """Waits for a pipeline; a failed one raises."""
  state = pipeline_result.wait_until_finish()
  client = getattr(pipeline_result, "client", None)  # DaskRunner: close our client before the cluster goes
  if client is not None:
    client.close()
  if state is not None and str(state).upper().endswith("FAILED"):
    raise RuntimeError(f"the Beam pipeline ended in state {state}")
