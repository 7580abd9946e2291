"""Orbax checkpoints of {train state, data iterator}: asynchronous, keep-last-N, newest restored.

Layout: RUN/checkpoints/<step>/{state,data}. Orbax writes each step into a temporary directory
and renames it when complete, so a checkpoint cut off mid-write is never listed, never restored.
Every process writes its own shards of the state and its own data-iterator state.

Integrity: once a step is complete, process 0 records the sha256 of every file in it in
RUN/checkpoint_hashes/<step>.json (TrainConfig.checkpoint_hashes; local file systems only).
A restore checks them first: a corrupted checkpoint is refused with the file named, never decoded.

RUN on a bucket (gs://...): orbax is given the URL itself (its paths are etils.epath, its arrays
tensorstore's gcs kvstore; scone_jax/paths.py configures both, an emulator included). No hash
records are kept there (as before: TrainConfig.checkpoint_hashes hashes local files only).
"""
from __future__ import annotations

import json
import os

import grain
import jax
import orbax.checkpoint as ocp

from scone_jax import paths
from scone_jax.config import TrainConfig
from scone_jax.errors import UserError
from scone_jax.files import atomic_write_json
from scone_jax.integrity import file_sha256


class Checkpoints:
  def __init__(self, workdir: str, cfg: TrainConfig, *, read_only: bool = False):
    self.directory = paths.join(paths.absolute(workdir), "checkpoints")
    self.read_only = read_only
    self.hashes = cfg.checkpoint_hashes and not paths.is_remote(workdir)
    if paths.is_remote(workdir):
      paths.configure()   # before orbax opens it: epath's backend, the emulator's endpoints
    options = ocp.CheckpointManagerOptions(
        max_to_keep=cfg.keep_checkpoints, enable_async_checkpointing=cfg.async_checkpoint,
        create=not read_only, read_only=read_only, cleanup_tmp_directories=not read_only)
    try:
      self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers={
          "state": ocp.StandardCheckpointHandler(), "data": grain.checkpoint.CheckpointHandler()})
    except (OSError, PermissionError) as e:
      raise UserError(f"cannot use checkpoint directory {self.directory!r}: {e}") from e

  # -- integrity ------------------------------------------------------------------------------
  def _hash_dir(self) -> str:
    return os.path.join(os.path.dirname(self.directory), "checkpoint_hashes")

  def _file_hashes(self, step: int) -> dict[str, str]:
    root = os.path.join(self.directory, str(step))
    out = {}
    for dirpath, _, files in os.walk(root):
      for name in files:
        path = os.path.join(dirpath, name)
        out[os.path.relpath(path, root)] = file_sha256(path)
    return out

  def seal(self) -> None:
    """Records the hashes of finished, not yet sealed steps (process 0); forgets deleted ones.
    It first waits for an asynchronous save in flight: its step is listed before its directory is
    committed, and hashing it then recorded nothing (an empty record that verified nothing)."""
    if not self.hashes or self.read_only:
      return
    self.manager.wait_until_finished()   # every process (it may synchronize them); the next save waits anyway
    if jax.process_index() != 0:
      return
    os.makedirs(self._hash_dir(), exist_ok=True)
    steps = {s for s in self.manager.all_steps() if os.path.isdir(os.path.join(self.directory, str(s)))}
    for name in os.listdir(self._hash_dir()):
      if name.endswith(".json") and name[:-5].isdigit() and int(name[:-5]) not in steps:
        os.remove(os.path.join(self._hash_dir(), name))
    for step in steps:
      path = os.path.join(self._hash_dir(), f"{step}.json")
      if not os.path.exists(path) and os.listdir(os.path.join(self.directory, str(step))):   # never an empty record
        atomic_write_json(path, self._file_hashes(step), indent=1, sort_keys=True)

  def verify(self, step: int) -> None:
    """The step's files equal its hash record, file for file. A step without a record is refused
    by readers (eval, export, generate); a training resume first records a step that orbax
    committed but the run did not get to hash (killed in between: the commit is atomic)."""
    path = os.path.join(self._hash_dir(), f"{step}.json")
    if not self.hashes:
      return
    step_dir = os.path.join(self.directory, str(step))
    if not any(files for _, _, files in os.walk(step_dir)):
      raise UserError(f"checkpoint step {step} in {self.directory!r} is empty (a stray directory, not a checkpoint): "
                      f"delete {step_dir} to use the step before it")
    if not os.path.exists(path):
      if not self.read_only:
        self.seal()
      elif os.path.isdir(self._hash_dir()):
        raise UserError(f"checkpoint step {step} in {self.directory!r} has no hash record ({path}): it cannot be "
                        "verified; resume training once to record it, or delete the step")
      else:
        return   # a run written before checkpoint hashes existed
    with open(path) as f:
      expected = json.load(f)
    actual = self._file_hashes(step)
    if not expected or set(expected) != set(actual):
      extra, lost = sorted(set(actual) - set(expected)), sorted(set(expected) - set(actual))
      raise UserError(f"checkpoint step {step} does not match its hash record ({path}: {len(expected)} files recorded, "
                      f"unrecorded {extra[:2]}, missing {lost[:2]}); delete {os.path.join(self.directory, str(step))} "
                      "to resume from the step before it")
    for name, digest in sorted(expected.items()):
      if actual.get(name) != digest:
        raise UserError(f"checkpoint step {step} is corrupted: {os.path.join(self.directory, str(step), name)} "
                        f"differs from its recorded sha256; delete {os.path.join(self.directory, str(step))} "
                        "to resume from the step before it")

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, data_iterator, *, force: bool = False) -> bool:
    self.seal()
    args = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      args["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    return self.manager.save(step, args=ocp.args.Composite(**args), force=force)

  def restore(self, step: int, abstract_state, data_iterator=None):
    """Restores the state onto the shardings of `abstract_state` (any mesh) and, if given,
    the data iterator in place."""
    self.verify(step)
    mismatch = self._mismatch(step, abstract_state)
    if mismatch:   # refused before orbax starts reading (a failed read leaves its threads printing)
      raise UserError(f"checkpoint step {step} in {self.directory!r} does not match this configuration ({mismatch}); "
                      "resume with the run's own settings (RUN/config.gin) or pick a new --workdir")
    args = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      args["data"] = grain.checkpoint.CheckpointRestore(_Position(data_iterator))
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(**args))
    except (ValueError, TypeError) as e:   # shapes or tree of another configuration
      first = " ".join(str(e).split())[:200]
      raise UserError(f"checkpoint step {step} in {self.directory!r} does not match this configuration ({first}); "
                      "resume with the run's own settings (RUN/config.gin) or pick a new --workdir") from e
    return restored["state"]

  def _mismatch(self, step: int, abstract_state) -> str | None:
    """The first array whose stored shape or dtype differs from `abstract_state`'s, from the
    step's metadata; None if all agree or the trees cannot be compared leaf by leaf (then the
    restore decides)."""
    try:   # the manager's own handler reads the step's metadata (no second checkpointer, no log line)
      stored = self.manager.item_metadata(step)["state"]
    except Exception:   # noqa: BLE001 - unreadable metadata: the restore reports it
      return None
    if stored is None:
      return None
    stored, wanted = _by_path(stored), _by_path(abstract_state)
    if set(stored) != set(wanted):
      return None
    for path in sorted(wanted, key=lambda p: (p[0] != "params", p)):   # parameters first
      a, b = stored[path], wanted[path]
      if tuple(a.shape) != tuple(b.shape) or jax.numpy.dtype(a.dtype) != jax.numpy.dtype(b.dtype):
        return (f"{'/'.join(path)}: stored {a.dtype}{list(a.shape)}, configured "
                f"{jax.numpy.dtype(b.dtype)}{list(b.shape)}")
    return None

  def wait(self) -> None:
    self.manager.wait_until_finished()
    self.seal()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.seal()
    self.manager.close()


class _Position:
  """Restores a data iterator's position and nothing else. grain's handler also starts the
  iterator's prefetch thread, from inside orbax's restore: a resumed run then began producing
  batches (SCONE's bucket sampling included) while its state was still being read, where a fresh
  run starts them at its first `next`. With this the loop starts both the same way."""

  def __init__(self, iterator):
    self.iterator = iterator

  def set_state(self, state: bytes) -> None:   # the handler hands a non-grain item its JSON as bytes
    self.iterator.set_state(_grain_state(json.loads(state)))

  def start_prefetch(self) -> None:
    pass


def _grain_state(state):
  """A data iterator's state as grain built it, from its JSON: the concat-then-split packer's
  `remainder_slices` are (start, stop) tuples, and it tells "no remainder" by comparing them with
  (-1, -1). JSON gives lists, which never equal that tuple: a checkpoint taken where a row ended
  at a document's end (no remainder) restored as a remainder sliced at -1, and the resumed run
  read other documents from that point (grain 0.2.18's own handler does the same)."""
  if isinstance(state, dict):
    return {k: ({f: tuple(v) for f, v in value.items()} if k == "remainder_slices" and isinstance(value, dict)
                else _grain_state(value)) for k, value in state.items()}
  if isinstance(state, list):
    return [_grain_state(v) for v in state]
  return state


def _by_path(tree) -> dict[tuple[str, ...], object]:
  """Array leaves of a pytree by path, each key as a plain string (dict key, attribute or index)."""
  def name(k):
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        return str(getattr(k, attr))
    return str(k)
  return {tuple(name(k) for k in path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
          if hasattr(leaf, "shape") and hasattr(leaf, "dtype")}
