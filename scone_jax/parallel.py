"""Mesh, the one logical-axis rules table, and multi-host start-up.

Mesh axes:
  data    pure data parallelism (parameters replicated)
  fsdp    data parallelism with parameters and optimizer state sharded over it (ZeRO-3 style)
  tensor  Megatron-style tensor parallelism: heads, FFN width and vocabulary split over it
Model code names logical axes only (below); RULES maps them to mesh axes. The f-gram model
and the embedding tables of the sibling methods have their own logical axes so that they can be
sharded differently from the main model.
"""
from __future__ import annotations

import math
import os
import select
import signal
import sys
import threading
import time
from typing import Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from scone_jax import tpu_attached
from scone_jax.config import MeshConfig
from scone_jax.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH = ("data", "fsdp")

# logical axis -> mesh axis (or tuple of mesh axes, or None = replicated)
RULES: tuple[tuple[str, object], ...] = (
    # activations
    ("batch", BATCH),
    ("length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    ("unique_fgrams", BATCH),     # the distinct f-grams of a batch, spread like the batch
    ("cache_length", None),       # decode KV cache slots (models/kv_cache.py)
    # main-model parameters
    ("layers", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("norm", None),
    ("pos", None),                # rows of the learned position table (ModelConfig.positions)
    # f-gram model A_f (training only)
    ("fgram_layers", None),
    ("fgram_embed", "fsdp"),
    ("fgram_heads", "tensor"),
    ("fgram_kv_heads", "tensor"),
    ("fgram_mlp", "tensor"),
    ("fgram_pos", None),
    # sibling methods' tables (rows sharded; offloaded at inference)
    ("table_rows", ("fsdp", "tensor")),
    ("table_dim", None),
)
_RULES = dict(RULES)


def fake_cpu_devices_flags(n: int) -> str:
  """XLA_FLAGS for a CPU host split into n devices. Collectives between fake devices rendezvous
  across threads; on a busy 2-core machine the default 40 s limit can abort a healthy run."""
  return (f"--xla_force_host_platform_device_count={n} --xla_cpu_collective_call_terminate_timeout_seconds=1200 "
          "--xla_cpu_collective_call_warn_stuck_timeout_seconds=300 --xla_cpu_collective_timeout_seconds=1200")


def logical_to_spec(names: Sequence[str | None]) -> P:
  """PartitionSpec of a tensor whose dimensions carry these logical names. A mesh axis can shard
  only one dimension of a tensor: names that map two dimensions onto one mesh axis are refused
  (give one of them another logical axis, or None), never silently dropped."""
  used: dict[str, str] = {}
  out = []
  for name in names:
    if name is not None and name not in _RULES:
      raise ValueError(f"logical axis {name!r} is not in parallel.RULES")
    axes = None if name is None else _RULES[name]
    flat = (axes,) if isinstance(axes, str) else tuple(axes or ())
    for a in flat:
      if a in used:
        raise ValueError(f"logical axes {tuple(names)}: {used[a]!r} and {name!r} both map to mesh axis {a!r}")
      used[a] = name
    out.append(None if not flat else flat[0] if len(flat) == 1 else flat)
  return P(*out)


def resolve_mesh_shape(cfg: MeshConfig, num_devices: int) -> dict[str, int]:
  sizes = {"data": cfg.data, "fsdp": cfg.fsdp, "tensor": cfg.tensor}
  fill = [k for k, v in sizes.items() if v == -1]
  if len(fill) > 1:
    raise UserError(f"mesh {sizes}: at most one axis may be -1")
  if any(v == 0 or v < -1 for v in sizes.values()):
    raise UserError(f"mesh {sizes}: axis sizes must be positive or -1")
  known = math.prod(v for v in sizes.values() if v != -1)
  if fill:
    if num_devices % known:
      raise UserError(f"mesh {sizes} does not divide the {num_devices} devices: fix MeshConfig")
    sizes[fill[0]] = num_devices // known
  if math.prod(sizes.values()) != num_devices:
    raise UserError(f"mesh {sizes} needs {math.prod(sizes.values())} devices but {num_devices} are present: fix MeshConfig")
  return sizes


def make_mesh(cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """The training mesh, laid out over the physical topology by jax.make_mesh."""
  devices = list(devices if devices is not None else jax.devices())
  sizes = resolve_mesh_shape(cfg, len(devices))
  shape = tuple(sizes[a] for a in MESH_AXES)
  # Auto axes: shardings come from jit's in/out shardings and from `constrain` (GSPMD style).
  return jax.make_mesh(shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES),
                       devices=devices)


def named(mesh: Mesh, names: Sequence[str | None]) -> NamedSharding:
  return NamedSharding(mesh, logical_to_spec(names))


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """with_sharding_constraint by logical names; a no-op outside a mesh context."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  return jax.lax.with_sharding_constraint(x, logical_to_spec(names))


def check_divisible(shape: Sequence[int], names: Sequence[str | None], mesh: Mesh, what: str) -> None:
  spec = logical_to_spec(names)
  for dim, axes in zip(shape, spec):
    if axes is None:
      continue
    axes = (axes,) if isinstance(axes, str) else axes
    n = math.prod(mesh.shape[a] for a in axes)
    if dim % n:
      raise UserError(f"{what}: dimension {dim} ({'/'.join(axes)}) is not divisible by {n} devices; "
                      "change the mesh or the model size")


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, *, heartbeat_timeout_seconds: int = 100,
                           startup_timeout_seconds: int = 300, command: str = "train") -> None:
  """Starts jax.distributed from flags, or with jax's own detection where `cluster_environment()`
  names one (SLURM, GKE, Open MPI, a Cloud TPU VM: one host of a slice included, then one process);
  else a no-op.

  On CPU the cross-process collectives go through gloo. Start-up never hangs silently: while the
  processes find each other a line says so every 30 s; after startup_timeout_seconds, or on
  Ctrl-C / SIGTERM, the process stops with one line (see _StartupWatch)."""
  explicit = coordinator_address is not None or num_processes is not None or process_id is not None
  if not (explicit or cluster_environment()):
    return
  if explicit and (coordinator_address is None or num_processes is None or process_id is None):
    raise UserError("multi-host needs all of --coordinator_address, --num_processes and --process_id")
  if jax.config.jax_platforms in (None, "", "cpu") or os.environ.get("JAX_PLATFORMS", "") == "cpu":
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  # A dead peer is noticed by missed heartbeats; every other process then stops with an error
  # instead of waiting forever in a collective.
  where = coordinator_address or "the auto-detected coordinator"
  # train keeps SIGTERM with jax's preemption notifier (every process then saves the same step);
  # the other commands end on it, as before.
  with _StartupWatch(startup_timeout_seconds, f"scone-jax {command}", where, num_processes,
                     keep_preemption=command == "train"):
    # jax's own limit is later than ours: it aborts the process from C++ with a stack trace.
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id, heartbeat_timeout_seconds=heartbeat_timeout_seconds,
                               initialization_timeout=startup_timeout_seconds + 60)


def cluster_environment() -> str | None:
  """The multi-host environment this process was started in, from local evidence only (its
  environment variables and device files), or None. Then jax.distributed.initialize() finds the
  coordinator, the process count and id itself: from SLURM's variables, GKE's TPU variables, Open
  MPI's, or on a Cloud TPU VM from its metadata server (the one request it makes, and only there:
  on a host without TPUs nothing is asked of anyone)."""
  if "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
    return "SLURM"
  if "MEGASCALE_COORDINATOR_ADDRESS" in os.environ or "TPU_WORKER_HOSTNAMES" in os.environ:
    return "GKE TPU"
  if "OMPI_MCA_orte_hnp_uri" in os.environ:
    return "Open MPI"
  if tpu_attached():
    return "Cloud TPU VM"
  return None


class _StartupWatch:
  """Watches jax.distributed.initialize, which blocks in C++: Python signal handlers cannot run
  until it returns, and its own time-out aborts the process with a stack trace. Python's C-level
  handler still writes every signal to the wakeup fd (signal.set_wakeup_fd) from whichever thread
  takes it, so this watcher thread sees Ctrl-C and SIGTERM at once and stops the process with
  "interrupted"; past the time-out it stops with one line naming the coordinator; every 30 s it
  says it is still waiting."""

  SIGNALS = (signal.SIGINT, signal.SIGTERM)

  def __init__(self, timeout_s: float, prog: str, where: str, processes: int | None, *, keep_preemption: bool = False):
    self.timeout_s, self.prog, self.where, self.processes = timeout_s, prog, where, processes
    self.keep_preemption = keep_preemption
    self._done = threading.Event()

  def __enter__(self):
    self._read, self._write = os.pipe()
    os.set_blocking(self._write, False)
    self._old_fd = signal.set_wakeup_fd(self._write)
    self._old = {}
    for sig in self.SIGNALS:   # through Python's handler (so through the wakeup fd); ignored stays ignored
      if signal.getsignal(sig) not in (signal.SIG_IGN, None):
        self._old[sig] = signal.signal(sig, lambda *_: None)
    self._thread = threading.Thread(target=self._watch, name="startup-watch", daemon=True)
    self._thread.start()
    return self

  def _stop(self, code: int, message: str) -> None:
    print(f"{self.prog}: {message}", file=sys.stderr, flush=True)
    os._exit(code)   # the main thread is inside C++; nothing of ours is half-written yet

  def _watch(self) -> None:
    start = time.monotonic()
    next_note = start + 30
    while not self._done.is_set():
      ready, _, _ = select.select([self._read], [], [], 0.5)
      if ready and any(b in {int(s) for s in self.SIGNALS} for b in os.read(self._read, 64)):
        self._stop(130, f"interrupted while waiting for the other processes at {self.where}")
      now = time.monotonic()
      if now - start > self.timeout_s:
        self._stop(2, f"error: the {self.processes or 'other'} processes did not all reach the coordinator "
                      f"{self.where} within {self.timeout_s:.0f} s: start every process (check "
                      "--coordinator_address, --num_processes, --process_id), or raise --startup_timeout_seconds")
      if now >= next_note:
        print(f"{self.prog}: waiting for the other processes at {self.where} ({now - start:.0f} s of "
              f"{self.timeout_s:.0f} s)", file=sys.stderr, flush=True)
        next_note = now + 30

  def __exit__(self, *exc):
    self._done.set()
    self._thread.join()
    signal.set_wakeup_fd(self._old_fd)
    for sig, handler in self._old.items():
      if sig == signal.SIGTERM and self.keep_preemption and preemption_synchronized():
        continue   # jax's preemption notifier took SIGTERM during initialize: restoring would undo it
      signal.signal(sig, handler)
    os.close(self._read)
    os.close(self._write)


def preemption_synchronized() -> bool:
  """Whether SIGTERM reaches jax's preemption sync manager: several processes, started by
  jax.distributed (its notifier catches SIGTERM in C++; `reached_preemption_sync_point` then
  names one step for every process: the first step past every process's current one)."""
  from jax._src import distributed
  return jax.process_count() > 1 and distributed.global_state.preemption_sync_manager is not None


class Agreement:
  """The elementwise maximum of a small list of ints over every process, once per call, through
  jax.distributed's key-value store (host to coordinator, no device collective: safe from the
  input pipeline's thread while a step runs). Every process must create its Agreements in the
  same order and call them equally often (the data pipeline does: each process runs the same
  number of batches). With one process it returns its argument."""

  _created: dict[str, int] = {}
  TIMEOUT_MS = 10 * 60 * 1000

  def __init__(self, name: str):
    n = Agreement._created.get(name, 0)
    Agreement._created[name] = n + 1
    self.prefix, self.round = f"scone_jax/agree/{name}/{n}", 0

  def max(self, values: Sequence[int]) -> list[int]:
    values = [int(v) for v in values]
    if jax.process_count() == 1:
      return values
    import json

    from jax._src import distributed
    client, pid = distributed.global_state.client, jax.process_index()
    key = f"{self.prefix}/{self.round}"
    client.key_value_set(f"{key}/{pid}", json.dumps(values))
    out = values
    for p in range(jax.process_count()):
      if p != pid:
        try:
          got = json.loads(client.blocking_key_value_get(f"{key}/{p}", self.TIMEOUT_MS))
        except Exception as e:   # a peer that died or stalled: the run cannot go on in step
          raise UserError(f"process {p} did not send its batch shape within {self.TIMEOUT_MS // 1000} s "
                          f"({' '.join(str(e).split())[:120]}); is it still running?") from e
        out = [max(a, b) for a, b in zip(out, got)]
    if self.round >= 2:   # every process has read round r-2 before it wrote round r-1
      client.key_value_delete(f"{self.prefix}/{self.round - 2}/{pid}")
    self.round += 1
    return out
