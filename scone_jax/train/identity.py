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

On a bucket (RUN = gs://...) there is no flock. `train` holds a lease instead: the object
RUN/.lock ({"holder": host:pid, "token", "expires"}), created only where none exists
(ifGenerationMatch=0 on GCS), renewed by a thread every LEASE_S / 4 seconds and deleted when the
run ends. Another writer is refused while the lease is live; a lease whose holder died is taken
over once it expires (at once when the holder was a process of this host that no longer runs).
After writing it, the writer reads it back and goes on only if it holds its own token. Best
effort where GCS offers no precondition through gcsfs: taking over an expired lease is a plain
overwrite, so two writers doing so in the same instant could both pass their read-back (a new
lock object cannot: its create-only write lets one through). Readers (`export`) of a remote run
are refused while a live lease is held and take none themselves.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import threading
import time

import jax

from scone_jax import paths
from scone_jax.errors import UserError
from scone_jax.files import Locked, atomic_write_json, directory_lock

FILE = "identity.json"
WHAT = {"data_fingerprint": "data", "tokenizer_sha256": "tokenizer", "fgrams_sha256": "f-gram file"}
OVERRIDABLE = ("data_fingerprint", "fgrams_sha256")   # --allow_other_data; the tokenizer never


def read(workdir: str) -> dict | None:
  path = paths.join(workdir, FILE)
  if not paths.isfile(path):
    return None
  try:
    recorded = json.loads(paths.read_text(path))
  except (OSError, json.JSONDecodeError) as e:
    raise UserError(f"{path!r} is unreadable ({e}); restore it or start a new --workdir") from e
  if not isinstance(recorded, dict):
    raise UserError(f"{path!r} is not a run identity; restore it or start a new --workdir")
  return recorded


def write(workdir: str, identity: dict) -> None:
  atomic_write_json(paths.join(workdir, FILE), identity, indent=1, sort_keys=True)


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
  beside it (`export`). Process 0 takes it for the whole job; on a bucket it is a lease (module
  docstring)."""
  if jax.process_index() != 0:
    return contextlib.nullcontext()
  if paths.is_remote(workdir):
    return _lease(workdir, shared)
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


# ---- a lease on a bucket ---------------------------------------------------------------------

LOCK = ".lock"
LEASE_S = 120.0


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def _live_holder(path: str) -> str | None:
  """The holder of a live lease at `path` (None: no lock object, or its lease is over)."""
  try:
    lease = json.loads(paths.read_text(path))
    holder, expires = str(lease["holder"]), float(lease["expires"])
  except FileNotFoundError:
    return None
  except (OSError, ValueError, KeyError, TypeError):
    return "unknown (an unreadable lock object)"
  host, _, pid = holder.rpartition(":")
  if host == socket.gethostname() and pid.isdigit() and not _pid_alive(int(pid)):
    return None   # its holder, a process of this host, is gone
  return holder if expires > time.time() else None


def _write_lease(path: str, holder: str, token: str, *, create: bool) -> None:
  data = json.dumps({"holder": holder, "token": token, "expires": time.time() + LEASE_S}).encode()
  if create:   # only where none exists: GCS refuses a second creation (ifGenerationMatch=0)
    paths.filesystem(path).pipe_file(path, data, mode="create")
  else:
    paths.atomic_write_bytes(path, data)


def _token_of(path: str) -> str | None:
  try:
    return json.loads(paths.read_text(path)).get("token")
  except (OSError, ValueError, AttributeError):
    return None


@contextlib.contextmanager
def _lease(workdir: str, shared: bool):
  path = paths.join(workdir, LOCK)
  busy = ("run directory {w!r} is in use by another process (a `scone-jax train` of it; {p} is held by {h} "
          "until its lease ends, within {s:.0f} s of its last renewal): wait for it to end or pick another --workdir")
  holder = _live_holder(path)
  if holder is not None:
    raise UserError(busy.format(w=workdir, p=path, h=holder, s=LEASE_S))
  if shared:   # a reader of a remote run: refused beside a live training, holds nothing itself
    yield
    return
  me, token = f"{socket.gethostname()}:{os.getpid()}", secrets.token_hex(8)
  try:
    _write_lease(path, me, token, create=not paths.exists(path))
  except FileExistsError:
    raise UserError(busy.format(w=workdir, p=path, h="another process", s=LEASE_S)) from None
  if _token_of(path) != token:
    raise UserError(busy.format(w=workdir, p=path, h=_live_holder(path) or "another process", s=LEASE_S))
  stop = threading.Event()

  def renew():
    while not stop.wait(LEASE_S / 4):
      if _token_of(path) != token:
        return   # taken over (this process was silent past its lease): the next writer owns RUN
      with contextlib.suppress(Exception):
        _write_lease(path, me, token, create=False)

  thread = threading.Thread(target=renew, name="scone-jax run lease", daemon=True)
  thread.start()
  try:
    yield
  finally:
    stop.set()
    thread.join()
    if _token_of(path) == token:
      with contextlib.suppress(Exception):
        paths.remove(path)
