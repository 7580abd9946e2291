"""A run's identity (what it was trained on, recorded in RUN/identity.json) and its lock.

  data_fingerprint   DATA's meta.json (tokenizer, counts, shard hashes): the tokens it read
  tokenizer_sha256   the tokenizer that made them (what `generate` encodes prompts with)
  + the method's own inputs (SCONE: fgrams_sha256, the f-gram file whose row r is f-gram id r)
Written when a run starts (after its checks pass) and compared whenever the run is used again:
a resume, eval, generate or export on other inputs is refused with both identities named, unless
asked for on purpose (`--allow_other_data`: other data or f-grams; never another tokenizer).
Runs written before identities were recorded have no identity.json and are not checked.

One writer per run: `train` holds an exclusive lock on RUN (files.directory_lock, released by the
kernel on any exit) and `export` a shared one, so no two trainings and no training beside an
export of the same run; a second writer gets a one-line error at once.
"""
from __future__ import annotations

import contextlib
import json
import os

import jax

from scone_jax.errors import UserError
from scone_jax.files import Locked, atomic_write_json, directory_lock

FILE = "identity.json"
WHAT = {"data_fingerprint": "data", "tokenizer_sha256": "tokenizer", "fgrams_sha256": "f-gram file"}
OVERRIDABLE = ("data_fingerprint", "fgrams_sha256")   # --allow_other_data; the tokenizer never


def read(workdir: str) -> dict | None:
  path = os.path.join(workdir, FILE)
  if not os.path.isfile(path):
    return None
  try:
    with open(path) as f:
      recorded = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise UserError(f"{path!r} is unreadable ({e}); restore it or start a new --workdir") from e
  if not isinstance(recorded, dict):
    raise UserError(f"{path!r} is not a run identity; restore it or start a new --workdir")
  return recorded


def write(workdir: str, identity: dict) -> None:
  atomic_write_json(os.path.join(workdir, FILE), identity, indent=1, sort_keys=True)


def check(workdir: str, current: dict, sources: dict, *, allow_other_data: bool = False,
          skip: tuple[str, ...] = ()) -> None:
  """Refuses `current` inputs (sources: key -> the path they came from) that differ from the
  run's recorded identity. skip: keys the caller changed on purpose (e.g. eval --data)."""
  recorded = read(workdir)
  if recorded is None:
    return
  for key, value in current.items():
    if key in skip or key not in recorded or recorded[key] == value:
      continue
    if allow_other_data and key in OVERRIDABLE:
      continue
    hint = ("pass --allow_other_data to use other data on purpose" if key in OVERRIDABLE
            else "use data made with the run's tokenizer")
    raise UserError(f"run {workdir!r} was trained on the {WHAT[key]} {recorded[key][:16]}, but "
                    f"{sources.get(key, 'this input')!r} has {value[:16]}: {hint}")


def run_lock(workdir: str, *, shared: bool = False):
  """The lock of a run directory: exclusive for `train`, shared for readers that must not run
  beside it (`export`). Process 0 takes it for the whole job (local paths)."""
  if jax.process_index() != 0 or "://" in workdir:
    return contextlib.nullcontext()
  return _mapped_lock(workdir, shared)


@contextlib.contextmanager
def _mapped_lock(workdir: str, shared: bool):
  created = not os.path.exists(workdir)
  try:
    with directory_lock(workdir, shared=shared):
      try:
        yield
      except BaseException:
        # A new run that failed before writing anything leaves no directory behind (only the lock).
        if created and os.listdir(workdir) == [".lock"]:
          os.remove(os.path.join(workdir, ".lock"))
          os.rmdir(workdir)
        raise
  except Locked as e:
    raise UserError(f"run directory {workdir!r} is in use by another process (a `scone-jax train` or `export` "
                    f"of it; {e.path} last taken by pid {e.holder}): wait for it to end or pick another --workdir") from None
