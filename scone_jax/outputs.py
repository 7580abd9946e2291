"""The one output guard: an output can never eat an input or an artifact of another kind.

Every command that writes a directory (prepare: DATA, fgrams build: FG, train: RUN, export: a
local STORE) calls `check_output` before it writes anything. It refuses an output that
  - equals, contains or lies inside one of the command's inputs (its data, f-grams, run, corpus
    files): a replace or a rename there would destroy what the command reads;
  - is a file, or a non-empty directory that is not an artifact of the command's own kind
    (`artifact_kind`): `--overwrite` (prepare) and a rebuild (fgrams build) replace only their
    own kind, and a train or export resumes only its own;
  - cannot be written (its parent is a file or not writable).
"""
from __future__ import annotations

import json
import os

from scone_jax.errors import UserError

KINDS = ("data", "fgrams", "tags", "run", "store")
NAMES = {"data": "prepared data directory (scone-jax prepare)", "fgrams": "f-gram vocabulary (scone-jax fgrams build)",
         "tags": "f-gram tags directory (scone-jax fgrams tag)",
         "run": "run directory (scone-jax train)", "store": "f-gram store (scone-jax export)"}


def _meta(path: str) -> dict:
  try:
    with open(os.path.join(path, "meta.json")) as f:
      raw = json.load(f)
    return raw if isinstance(raw, dict) else {}
  except (OSError, ValueError):
    return {}


def artifact_kind(path: str) -> str | None:
  """What `path` holds: None (nothing: absent or an empty directory), "file", one of KINDS, or
  "other" (a non-empty directory of something else)."""
  if not os.path.lexists(path):
    return None
  if not os.path.isdir(path):
    return "file"
  names = {n for n in os.listdir(path) if not n.startswith(".")}   # .lock, editors' and OSes' files
  if not names:
    return None
  meta = _meta(path) if "meta.json" in names else {}
  if "num_shards" in meta and "vocab_size" in meta:
    return "data"
  if "max_n" in meta and any(n == "fgrams.parquet" or (n.startswith("fgrams-") and n.endswith(".parquet")) for n in names):
    return "fgrams"   # one file or shards (fgram/vocab.py)
  if meta.get("kind") == "scone-jax tags":
    return "tags"
  if names & {"config.gin", "checkpoints", "identity.json", "metrics.jsonl"}:
    return "run"
  if "manifest.json" in names or ("progress" in names and "zarr.json" in names):
    return "store"
  return "other"


def _inside(a: str, b: str) -> bool:
  """a == b or a lies inside b (resolved paths)."""
  return a == b or a.startswith(b.rstrip(os.sep) + os.sep)


def check_output(out: str, kind: str, *, flag: str = "--out", inputs=None, replace: bool = True,
                 hint: str = "") -> None:
  """Refuses `out` as the output of an artifact of `kind` (module docstring); inputs: what the
  command reads, {name: path} or [(name, path), ...]. replace: an existing artifact of the same
  kind may be replaced or resumed (False: `out` must be absent or empty; hint says how to allow
  replacing it)."""
  assert kind in KINDS, kind
  target = os.path.realpath(out)
  pairs = inputs.items() if isinstance(inputs, dict) else (inputs or ())
  for name, path in pairs:
    if not path or "://" in path:
      continue
    source = os.path.realpath(path)
    if _inside(target, source) or _inside(source, target):
      where = "is" if target == source else "lies inside" if _inside(target, source) else "contains"
      raise UserError(f"{flag} {out!r} {where} the input {name} {path!r}: writing there would destroy it; "
                      "pick an output outside the inputs")
  found = artifact_kind(out)
  if found == "file":
    raise UserError(f"{flag} {out!r} is a file; pass a directory path for the {NAMES[kind]}")
  if found is not None and not replace:
    raise UserError(f"{flag} {out!r} is not empty; {hint or 'choose another path'}")
  if found is not None and found != kind:
    what = f"a {NAMES[found]}" if found in KINDS else "other files"
    raise UserError(f"{flag} {out!r} holds {what}, not a {NAMES[kind]}: refusing to replace it; pass a new path")
  _check_writable(out, flag)


def _check_writable(out: str, flag: str) -> None:
  parent = os.path.dirname(os.path.abspath(out))
  blocker = parent
  while blocker and not os.path.exists(blocker):
    blocker = os.path.dirname(blocker)
  if blocker and not os.path.isdir(blocker):
    raise UserError(f"{flag} {out!r}: {blocker!r} is a file, not a directory; pass a writable path")
  if blocker and not os.access(blocker, os.W_OK | os.X_OK):
    raise UserError(f"{flag} {out!r}: {blocker!r} is not writable; pass a writable path")


def pyplot():
  """matplotlib.pyplot on the Agg backend (files, no display), or a one-line error naming the
  extra: figures are optional (`pip install 'scone_jax[plots]'`; `make install` has it)."""
  try:
    import matplotlib
  except ImportError as e:
    raise UserError("figures need the plots extra (matplotlib is not installed): pip install 'scone_jax[plots]'") from e
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt
