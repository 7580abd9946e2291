"""A trained run restored for inference (export, eval, generate, the tests): one function for all.

`load_run` rebuilds the experiment from RUN/config.gin and restores the newest (or a chosen)
checkpoint onto a mesh of the given devices. `params_sha256` identifies a set of parameters
(sha256 over every parameter sorted by path: path, dtype, shape, little-endian bytes),
independently of the mesh they are sharded over; a store's manifest records it at export.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile

import jax
import numpy as np
from jax.experimental import multihost_utils

from scone_jax import experiment, parallel, paths
from scone_jax.config import MeshConfig
from scone_jax.errors import UserError
from scone_jax.train import identity
from scone_jax.train.checkpoint import Checkpoints
from scone_jax.train.state import Trainer, make_trainer


@dataclasses.dataclass
class LoadedRun:
  workdir: str
  exp: experiment.Experiment
  trainer: Trainer    # its mesh is where params live
  params: dict        # pure dict of parameter arrays
  step: int


def load_run(workdir: str, *, step: int | None = None, devices=None, data_dir: str | None = None,
             mesh_config: MeshConfig | None = None, allow_other_data: bool = False) -> LoadedRun:
  """Restores RUN's checkpoint. devices: where the parameters go (default: all); mesh_config:
  the mesh over them (default: the run's own mesh when it fits those devices, else pure data
  parallelism). The run's inputs must be the ones it recorded (train/identity.py): data_dir
  (another corpus on purpose) may differ in its data but not in its tokenizer; allow_other_data
  also lets the run's own DATA_DIR or f-gram file have changed."""
  config_path = paths.join(workdir, "config.gin")
  paths.check_bucket(workdir)   # gs://: a missing bucket is one line (nothing for a local path)
  if not paths.isfile(config_path):
    raise UserError(f"{config_path!r} does not exist: --workdir must be a run directory written by `scone-jax train`")
  if paths.is_remote(config_path):   # gin reads local files: parse a local copy of the run's config
    with tempfile.TemporaryDirectory(prefix="scone-jax-run-config-") as tmp:
      local = os.path.join(tmp, "config.gin")
      _copy_down(config_path, local)
      exp = experiment.load([local], [], data_dir=data_dir)
  else:
    exp = experiment.load([config_path], [], data_dir=data_dir)
  identity.check(workdir, exp.identity(), exp.identity_sources(), allow_other_data=allow_other_data,
                 skip=("data_fingerprint",) if data_dir else ())
  devices = list(devices if devices is not None else jax.devices())
  if mesh_config is None:
    mesh_config = exp.mesh
    try:
      parallel.resolve_mesh_shape(mesh_config, len(devices))
    except UserError:
      mesh_config = MeshConfig(data=-1, fsdp=1, tensor=1)
  trainer = make_trainer(exp, parallel.make_mesh(mesh_config, devices))
  ckpt = Checkpoints(workdir, exp.train, read_only=True)
  try:
    step = step if step is not None else ckpt.latest_step()
    if step is None:
      raise UserError(f"no checkpoint in {ckpt.directory!r}: train first")
    if step not in ckpt.manager.all_steps():
      raise UserError(f"no checkpoint of step {step} in {ckpt.directory!r} (have {sorted(ckpt.manager.all_steps())})")
    state = ckpt.restore(step, trainer.abstract_state())
  finally:
    ckpt.close()
  return LoadedRun(paths.absolute(workdir), exp, trainer, state.params, int(step))


def _copy_down(remote: str, local: str) -> None:
  with open(local, "wb") as f:
    f.write(paths.read_bytes(remote))


def params_sha256(params: dict) -> str:
  """sha256 identifying a set of parameters: independent of the mesh they are sharded over."""
  digest = hashlib.sha256()
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  for path, leaf in sorted(leaves, key=lambda item: jax.tree_util.keystr(item[0])):
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
      leaf = multihost_utils.process_allgather(leaf, tiled=True)
    value = np.ascontiguousarray(np.asarray(leaf))
    value = value.astype(value.dtype.newbyteorder("<"), copy=False)
    digest.update(f"{jax.tree_util.keystr(path)}|{value.dtype.name}|{value.shape}|".encode())
    digest.update(memoryview(value.reshape(-1).view(np.uint8)))
  return digest.hexdigest()
