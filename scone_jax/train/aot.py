"""`scone-jax compile`: ahead-of-time compile of the real train step for a TPU topology, from any host.

libtpu (installed everywhere) describes a TPU slice it is not attached to: compile-only devices
with the slice's chips, hosts and torus. The command builds the same Trainer, mesh, shardings and
jitted train step that `scone-jax train` runs, lowers it on abstract arguments (no data, no
parameters in memory) and compiles it for those devices; XLA's per-device memory analysis then
says whether one step fits in a chip's HBM. No data directory is needed: the vocabulary size
comes from ModelConfig.vocab_size (or DATA_DIR's meta.json when that exists on this host).

Slice names: v4 and v5p names count TensorCores (v5p-256 = 128 chips, 2 cores each, one JAX
device per chip: "megacore"); v5e and v6e names count chips (v6e-256 = 256 chips). libtpu's own
names (`v5p:4x4x8`, `v6e:16x16`) are accepted too.

Exit status: 0 fits, 1 does not fit (numbers printed), 2 bad input (mesh does not divide the
slice, unknown topology, ...).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import re
import tempfile
import time

import jax
import numpy as np
from jax.experimental import topologies

from scone_jax import config as C, experiment, parallel
from scone_jax.config import bindings_from_flags
from scone_jax.data import shards
from scone_jax.errors import UserError
from scone_jax.files import human_bytes
from scone_jax.train.state import make_trainer

ACCEPTS_EXTRA = True  # --gin.NAME=VALUE overrides

GIB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class Generation:
  name: str                 # in slice names: v4, v5p, v5e, v6e
  torus_dims: int           # 3 for v4/v5p (3-D torus), 2 for v5e/v6e
  cores_per_named_unit: int  # slice names count TensorCores (2 per chip) or chips (1)
  chip_config: str          # libtpu chip config: one JAX device per chip ("megacore") or per core
  hbm_gib: float            # HBM per chip

  @property
  def names_count(self) -> str:
    return "TensorCores, 2 per chip" if self.cores_per_named_unit == 2 else "chips"


GENERATIONS = {
    "v4": Generation("v4", 3, 2, "megacore", 32.0),
    "v5p": Generation("v5p", 3, 2, "megacore", 95.0),
    "v5e": Generation("v5e", 2, 1, "default", 16.0),
    "v6e": Generation("v6e", 2, 1, "default", 32.0),
}
ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6litepod": "v6e"}


@dataclasses.dataclass(frozen=True)
class Topology:
  name: str                   # as the user gave it
  generation: Generation
  chip_grid: tuple[int, ...]  # chips along each torus dimension

  @property
  def chips(self) -> int:
    return math.prod(self.chip_grid)

  @property
  def libtpu_name(self) -> str:
    return f"{self.generation.name}:{'x'.join(map(str, self.chip_grid))}"

  @property
  def chips_per_host(self) -> tuple[int, int, int]:
    """Hosts hold 2x2x1 chips, except 2-D slices of up to 8 chips, which are one host."""
    if self.generation.torus_dims == 2 and self.chips <= 8:
      return (*self.chip_grid, 1)
    return (2, 2, 1)

  @property
  def slice_name(self) -> str:
    return f"{self.generation.name}-{self.chips * self.generation.cores_per_named_unit}"


def standard_chip_grid(chips: int, torus_dims: int) -> tuple[int, ...] | None:
  """The chip grid of a standard slice with this many chips (None if there is none): start from
  2x2x1 (3-D; v4-8) or 1x1 (2-D) and double the last of the smallest dimensions, which gives the
  published shapes (v5p-256 = 4x4x8, v4-32 = 2x2x4, v6e-256 = 16x16, v5e-32 = 4x8)."""
  grid = [2, 2, 1] if torus_dims == 3 else [1, 1]
  if chips < math.prod(grid) or chips & (chips - 1):
    return None
  while math.prod(grid) < chips:
    smallest = min(grid)
    grid[max(i for i, n in enumerate(grid) if n == smallest)] *= 2
  return tuple(grid)


def parse_topology(name: str) -> Topology:
  """`v5p-256`, `v6e-256`, `v4-32`, `v5litepod-16`, or libtpu's `v5p:4x4x8`."""
  m = re.fullmatch(r"([a-z0-9]+)(?:-(\d+)|:(\d+(?:x\d+)+))", name.strip().lower())
  gen = GENERATIONS.get(ALIASES.get(m.group(1), m.group(1))) if m else None
  if gen is None:
    raise UserError(f"--topology {name!r} is not a TPU slice name like v5p-256, v6e-256, v4-32, v5e-16 "
                    f"or v5p:4x4x8 (generations: {', '.join(sorted(GENERATIONS))})")
  if m.group(3):
    grid = tuple(int(n) for n in m.group(3).split("x"))
    if len(grid) != gen.torus_dims:
      raise UserError(f"--topology {name!r}: {gen.name} slices have a {gen.torus_dims}-D chip grid")
    return Topology(name, gen, grid)
  units = int(m.group(2))
  grid = None if units % gen.cores_per_named_unit else standard_chip_grid(units // gen.cores_per_named_unit,
                                                                         gen.torus_dims)
  if grid is None:
    smallest = (4 if gen.torus_dims == 3 else 1) * gen.cores_per_named_unit
    raise UserError(f"--topology {name!r}: {gen.name} names count {gen.names_count}; the standard slices "
                    f"are powers of two from {gen.name}-{smallest}; give an explicit grid like "
                    f"{gen.name}:{'x'.join(['4'] * gen.torus_dims)} for others")
  return Topology(name, gen, grid)


@contextlib.contextmanager
def _no_tpu_metadata(topo: Topology):
  """libtpu asks the (absent) Cloud TPU metadata server for the slice it runs on and prints a page
  of warnings; tell it instead, for as long as the plugin loads, then restore the environment (the
  TPU_* variables also mean "on a TPU pod" to parallel.initialize_distributed). Compiling opens no
  chip, so several compiles may load libtpu at once (by default a lock file allows one process)."""
  values = {"TPU_SKIP_MDS_QUERY": "1", "TPU_ACCELERATOR_TYPE": topo.slice_name,
            "TPU_WORKER_HOSTNAMES": "localhost", "TPU_WORKER_ID": "0", "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}
  saved = {k: os.environ.get(k) for k in values}
  os.environ.update({k: v for k, v in values.items() if saved[k] is None})
  try:
    yield
  finally:
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)


def topology_devices(topo: Topology) -> list:
  """Compile-only JAX devices of the slice (one per chip on every generation we support)."""
  with _no_tpu_metadata(topo):
    try:
      desc = topologies.get_topology_desc(topo.libtpu_name, "tpu", chip_config_name=topo.generation.chip_config,
                                          chips_per_host_bounds=topo.chips_per_host)
    except (RuntimeError, jax.errors.JaxRuntimeError) as e:
      raise UserError(f"libtpu cannot describe topology {topo.libtpu_name} ({topo.name}): "
                      f"{str(e).splitlines()[0]}") from e
  devices = list(desc.devices)
  assert len(devices) == topo.chips, (len(devices), topo)
  return devices


@dataclasses.dataclass(frozen=True)
class MemoryUse:
  """Bytes per chip of one compiled train step (XLA's memory analysis of the SPMD program)."""
  arguments: int
  outputs: int
  aliased: int          # outputs written in place of donated arguments (the new train state)
  temporaries: int
  generated_code: int

  @property
  def total(self) -> int:
    return self.arguments + self.outputs - self.aliased + self.temporaries + self.generated_code

  @classmethod
  def of(cls, stats) -> MemoryUse:
    return cls(stats.argument_size_in_bytes, stats.output_size_in_bytes, stats.alias_size_in_bytes,
               stats.temp_size_in_bytes, stats.generated_code_size_in_bytes)


def bytes_per_chip(tree) -> int:
  """Bytes one device holds of a pytree of sharded ShapeDtypeStructs (shards are even)."""
  return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def load_experiment(gin_files: list[str], bindings: list[str]):
  """experiment.load without the data: DATA_DIR may be unset or not on this host. Then a stand-in
  meta.json (in a temporary directory) carries only ModelConfig.vocab_size."""
  # The run files' %DATA_DIR and SCONE's %FGRAM_DIR are gin.REQUIRED; no data is needed here.
  bindings = ["DATA_DIR = ''", "FGRAM_DIR = ''"] + list(bindings)
  experiment.parse(gin_files, bindings)
  data_dir = C.build(C.DataConfig).data_dir
  if data_dir and os.path.isfile(os.path.join(data_dir, shards.META)):
    return experiment.load(gin_files, bindings)
  model = C.build(C.ModelConfig)
  vocab = model.vocab_size
  if vocab <= 0:
    raise UserError("ModelConfig.vocab_size is unset and there is no DATA_DIR meta.json on this host: "
                    "give --gin.ModelConfig.vocab_size=N (or --gin.DATA_DIR=\"'/path/to/data'\")")
  with tempfile.TemporaryDirectory(prefix="scone_jax_compile_") as stand_in:
    shards.write_meta(stand_in, shards.DataMeta(
        vocab_size=vocab, pad_id=0, eos_id=1, bos_id=2, unk_id=3, tokenizer_sha256="",
        num_documents={}, num_tokens={}, num_shards={}, source="scone-jax compile: no data"))
    # The method sizes itself from its config (SCONE: the planned K and |V_f|, no f-gram file).
    return experiment.load(gin_files, bindings, data_dir=stand_in, planned=True)


def abstract_batch(exp, trainer, num_hosts: int) -> tuple[dict, dict]:
  """(one host's batch, the global batch) as ShapeDtypeStructs. Rows are [seq_len] int32; the
  method's row and batch features run on an empty host batch to give their shapes; per-batch
  lists (`unique_*`) are concatenated over hosts, as Trainer.global_batch does."""
  d = exp.data
  host_rows = d.batch_size // num_hosts
  row = {k: np.zeros(d.seq_len, np.int32) for k in ("inputs", "targets")}
  sidecar = exp.method.sidecar()
  if sidecar:
    row[sidecar[0]] = np.ones(d.seq_len, np.int32)
  for fn in exp.method.document_features():
    row = fn(row)
  row.update({k: np.zeros(d.seq_len, np.int32) for k in ("segment_ids", "positions")})
  for fn in exp.method.row_features():
    row = fn(row)
  local = {k: np.stack([v] * host_rows) for k, v in row.items()}
  for fn in exp.method.batch_features(0, trainer.batch_devices, host_rows):
    local = fn(local)
  local = {k: v for k, v in local.items() if not k.startswith("stat_")}
  host = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in local.items()}
  glob = {k: jax.ShapeDtypeStruct(((v.shape[0] * num_hosts) if k.startswith("unique_") else d.batch_size,)
                                  + v.shape[1:], v.dtype) for k, v in local.items()}
  return host, glob


def lower_train_step(exp, trainer, num_hosts: int):
  """`scone-jax train`'s jitted step lowered on abstract (state, batch): (lowered, the arguments)."""
  host_batch, global_batch = abstract_batch(exp, trainer, num_hosts)
  shardings = trainer.batch_shardings(host_batch)
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=shardings[k]) for k, v in global_batch.items()}
  arguments = (trainer.abstract_state(), batch)
  with jax.set_mesh(trainer.mesh):
    return trainer.jit_train_step(host_batch).lower(*arguments), arguments


def _oom_numbers(message: str) -> tuple[float, float] | None:
  """(required, available) GiB from XLA's compile-time HBM OOM error, if it says them."""
  units = {"K": 2 ** -20, "M": 2 ** -10, "G": 1.0, "T": 2 ** 10}
  m = re.search(r"\(([\d.]+)([KMGT])\)\s+exceeds available HBM \(([\d.]+)([KMGT])\)", message)
  if not m:
    return None
  return float(m.group(1)) * units[m.group(2)], float(m.group(3)) * units[m.group(4)]


def add_arguments(p: argparse.ArgumentParser) -> None:
  p.epilog = "gin overrides: --gin.NAME=VALUE (e.g. --gin.MeshConfig.fsdp=64), as for `scone-jax train`"
  C.add_gin_arguments(p)
  p.add_argument("--topology", required=True,
                 help="TPU slice: v5p-256, v6e-256, v4-32, v5e-16 (v4/v5p count TensorCores, v5e/v6e chips) "
                      "or libtpu's v5p:4x4x8")
  p.add_argument("--hbm_gib", type=float, default=None, help="HBM per chip to fit into (default: the chip's)")


def run(args) -> int:
  topo = parse_topology(args.topology)
  exp = load_experiment(C.gin_files_of(args), bindings_from_flags(args.extra))
  devices = topology_devices(topo)
  hosts = len({d.process_index for d in devices})
  gen = topo.generation
  print(f"topology: {topo.name} = {topo.libtpu_name}: {topo.chips} chips ({devices[0].device_kind}), "
        f"{hosts} hosts; {gen.name} slice names count {gen.names_count}", flush=True)
  mesh = parallel.make_mesh(exp.mesh, devices)
  print(f"mesh: {dict(mesh.shape)}", flush=True)
  trainer = make_trainer(exp, mesh, num_hosts=hosts)
  for line in exp.accounting(trainer.abstract_params, hosts, trainer.batch_devices).lines():
    print(line)
  print(f"batch: {exp.data.batch_size} x {exp.data.seq_len} tokens, dtype {exp.model.dtype}, "
        f"remat {exp.model.remat_policy}, scan_layers {exp.model.scan_layers}", flush=True)

  hbm = args.hbm_gib or gen.hbm_gib
  t0 = time.perf_counter()
  lowered, arguments = lower_train_step(exp, trainer, hosts)
  t_lower = time.perf_counter() - t0
  try:
    compiled = lowered.compile()
  except jax.errors.JaxRuntimeError as e:
    # XLA refuses a TPU program that cannot fit at compile time and says what it needed; its
    # number ("HLO temporaries") counts the live arguments too (checked against the shardings).
    numbers = _oom_numbers(str(e)) if "RESOURCE_EXHAUSTED" in str(e) else None
    if numbers is None:
      raise
    needed, available = numbers
    arguments_gib = bytes_per_chip(arguments) / GIB
    print(f"compile: {time.perf_counter() - t0:.1f} s (lower {t_lower:.1f} s): XLA ran out of HBM")
    print(f"memory per chip: arguments {arguments_gib:.2f} GiB (from the shardings), temporaries "
          f"{needed - arguments_gib:.2f} GiB (XLA's total less the arguments), {available:.2f} GiB of HBM "
          "available to programs")
    print(f"does not fit: total {needed:.2f} GiB of {available:.2f} GiB HBM per chip ({needed / available:.1%})")
    log_dir = os.environ.get("TPU_LOG_DIR", "/tmp/tpu_logs")
    print(f"XLA's list of the largest buffers: {log_dir}/tpu_driver.ERROR")
    return 1
  print(f"compile: {time.perf_counter() - t0:.1f} s (lower {t_lower:.1f} s)")
  mem = MemoryUse.of(compiled.memory_analysis())
  print(f"memory per chip: arguments {human_bytes(mem.arguments)}, outputs {human_bytes(mem.outputs)} "
        f"({human_bytes(mem.aliased)} aliased to donated arguments), temporaries {human_bytes(mem.temporaries)}, "
        f"generated code {human_bytes(mem.generated_code)}")
  fits = mem.total <= hbm * GIB
  print(f"{'fits' if fits else 'does not fit'}: total {human_bytes(mem.total)} of {hbm:.2f} GiB HBM per chip "
        f"({mem.total / (hbm * GIB):.1%})")
  return 0 if fits else 1
