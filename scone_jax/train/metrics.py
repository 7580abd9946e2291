"""Run metrics: RUN/metrics.jsonl (written here, read with `read`), TensorBoard events, throughput and MFU.

MFU = achieved model FLOP/s / peak FLOP/s. The peak comes from a table for known accelerators;
on a CPU (or an unknown device) it is measured: the best FLOP/s of a large float32 matmul on all
local devices, timed here (this is what `scone-jax bench train` reports against, too).

RUN on a bucket (gs://...): an object cannot be appended to, so the records are kept in memory
and RUN/metrics.jsonl is rewritten whole (one atomic object write, the earlier invocations'
records first) at most every FLUSH_S seconds, at each `flush` (the loop flushes before every
checkpoint, so the records up to a checkpoint are on the bucket before it) and at `close`.
TensorBoard (tensorboardX writes local files only) writes its event file into a local temporary
directory that is copied to RUN/tensorboard/ at the same moments; each invocation's event file
has its own name, so those of earlier invocations stay. `read` returns the same records either way.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time

import jax
import jax.numpy as jnp
from tensorboardX import SummaryWriter

from scone_jax import paths

METRICS_FILE = "metrics.jsonl"
TENSORBOARD = "tensorboard"
FLUSH_S = 30.0   # a remote RUN: the longest its metrics and TensorBoard files lag behind

# bf16 dense peak per chip, FLOP/s.
KNOWN_PEAKS = {
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v5": 459e12,
    "TPU v6 lite": 918e12, "TPU v6e": 918e12, "NVIDIA H100 80GB HBM3": 989e12, "NVIDIA H200": 989e12,
    "NVIDIA A100-SXM4-80GB": 312e12, "NVIDIA A100-SXM4-40GB": 312e12,
}


def measure_matmul_peak(n: int = 1024, repeats: int = 5, dtype=jnp.float32) -> float:
  """Best sustained FLOP/s of this process's devices on n x n matmuls (all devices at once)."""
  devices = jax.local_devices()
  k = 8  # chained matmuls per call, so dispatch overhead does not count
  xs = [jax.device_put(jnp.ones((n, n), dtype) / n, d) for d in devices]

  @jax.jit
  def chain(a):
    for _ in range(k):
      a = a @ a
    return a

  for x in xs:
    chain(x).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    outs = [chain(x) for x in xs]
    for o in outs:
      o.block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return 2.0 * n ** 3 * k * len(devices) / best


_MEASURED: dict = {}


def peak_flops(measure_if_unknown: bool = True, n: int = 512) -> tuple[float, str]:
  """(peak FLOP/s of this process's devices, where the number came from); measured once per process."""
  kind = jax.local_devices()[0].device_kind
  for name, peak in KNOWN_PEAKS.items():
    if kind.startswith(name):
      return peak * jax.local_device_count(), f"table ({kind})"
  if not measure_if_unknown:
    return float("nan"), "unknown"
  if n not in _MEASURED:
    _MEASURED[n] = measure_matmul_peak(n)
  return _MEASURED[n], f"measured float32 matmul on {jax.local_device_count()} {kind} device(s)"


class MetricsWriter:
  """Appends one JSON line per record to RUN/metrics.jsonl and mirrors scalars to TensorBoard.
  Only process 0 writes. On a bucket both are buffered and rewritten (module docstring)."""

  def __init__(self, workdir: str):
    self.enabled = jax.process_index() == 0
    self.remote = paths.is_remote(workdir)
    self._tb = None
    if not self.enabled:
      return
    self._path = paths.join(workdir, METRICS_FILE)
    if self.remote:
      self._workdir = workdir
      self._lines = [paths.read_text(self._path)] if paths.exists(self._path) else []
      self._tb_local = tempfile.mkdtemp(prefix="scone-jax-tensorboard-")
      self._tb = SummaryWriter(self._tb_local)
      self._flushed = time.monotonic()
    else:
      os.makedirs(workdir, exist_ok=True)
      self._file = open(self._path, "a")
      self._tb = SummaryWriter(os.path.join(workdir, TENSORBOARD))

  def write(self, step: int, split: str, values: dict) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), "split": split, "time": time.time(), **{k: float(v) for k, v in values.items()}}
    if self.remote:
      self._lines.append(json.dumps(record) + "\n")
    else:
      self._file.write(json.dumps(record) + "\n")
      self._file.flush()
    for k, v in values.items():
      self._tb.add_scalar(f"{split}/{k}", float(v), int(step))
    if self.remote and time.monotonic() - self._flushed >= FLUSH_S:
      self.flush()

  def flush(self) -> None:
    """Makes every record so far durable in RUN (a remote RUN: rewrites its objects; a local one
    is flushed line by line already)."""
    if not (self.enabled and self.remote):
      return
    self._tb.flush()
    self._sync()

  def _sync(self) -> None:
    paths.atomic_write_text(self._path, "".join(self._lines))
    for name in os.listdir(self._tb_local):
      paths.upload(os.path.join(self._tb_local, name), paths.join(self._workdir, TENSORBOARD, name))
    self._flushed = time.monotonic()

  def close(self) -> None:
    if not self.enabled:
      return
    if not self.remote:
      self._file.close()
      self._tb.close()
      return
    try:
      self._tb.close()
      self._sync()
    finally:
      shutil.rmtree(self._tb_local, ignore_errors=True)


def read(workdir: str, split: str | None = None) -> list[dict]:
  """The records of RUN/metrics.jsonl in the order written, of one split ("train",
  "validation") or of all: {"step": int, "split": str, "time": float, <metric>: float, ...}.
  A resumed run may log steps again (from its checkpoint on): they appear where they were
  written. A last line without its newline (still being written) is left out, so the file of a
  running training reads cleanly. Raises FileNotFoundError when the run has logged nothing."""
  records = []
  with paths.open_file(paths.join(workdir, METRICS_FILE)) as f:
    for line in f:
      if not line.endswith("\n"):
        break
      record = json.loads(line)
      if split is None or record["split"] == split:
        records.append(record)
  return records
