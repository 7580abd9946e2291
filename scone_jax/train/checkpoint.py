"""Orbax checkpoints of {train state, data iterator}: asynchronous, keep-last-N, newest restored.

Layout: RUN/checkpoints/<step>/{state,data}. Orbax writes each step into a temporary directory
and renames it when complete, so a checkpoint cut off mid-write is never listed, never restored.
Every process writes its own shards of the state and its own data-iterator state.
"""
from __future__ import annotations

import os

import grain
import orbax.checkpoint as ocp

from scone_jax.config import TrainConfig
from scone_jax.errors import UserError


class Checkpoints:
  def __init__(self, workdir: str, cfg: TrainConfig, *, read_only: bool = False):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    options = ocp.CheckpointManagerOptions(
        max_to_keep=cfg.keep_checkpoints, enable_async_checkpointing=cfg.async_checkpoint,
        create=not read_only, read_only=read_only, cleanup_tmp_directories=not read_only)
    try:
      self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data"))
    except (OSError, PermissionError) as e:
      raise UserError(f"cannot use checkpoint directory {self.directory!r}: {e}") from e

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, data_iterator, *, force: bool = False) -> bool:
    args = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      args["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    return self.manager.save(step, args=ocp.args.Composite(**args), force=force)

  def restore(self, step: int, abstract_state, data_iterator=None):
    """Restores the state onto the shardings of `abstract_state` (any mesh) and, if given,
    the data iterator in place."""
    args = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      args["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self.manager.restore(step, args=ocp.args.Composite(**args))
    return restored["state"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
