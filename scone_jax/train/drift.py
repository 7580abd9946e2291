"""Resume that refuses drift: the operative config of a resumed run against RUN/config.gin.

A resumed run must be the run it continues. Before anything in RUN is written, the bindings this
process resolved (gin's operative config) are compared with the ones the run saved:
  refused   a change to the model or the data's shape: ModelConfig.*, the methods' configs (A_f's
            shape and |V_f|, LongCat's tables, STEM's layers), DataConfig.seq_len/batch_size and
            the macros they come from; one line names every changed binding
  recorded  anything else (steps, logging, evaluation, checkpointing, learning rate, mesh, paths,
            ...): allowed, and appended to RUN/config_changes.jsonl with the step it applies from
Inputs (DATA, FG, TAGS) are checked by their content elsewhere (train/identity.py), so a changed
path alone is recorded, not refused.
"""
from __future__ import annotations

import json
import re

from scone_jax import config as C, paths
from scone_jax.errors import UserError

CHANGES = "config_changes.jsonl"

# Bindings whose change makes another run: exact names, or a configurable's every parameter ("Name.").
REFUSED = ("ModelConfig.", "NgramHashConfig.", "StemConfig.", "DataConfig.seq_len", "DataConfig.batch_size",
           "FgramConfig.num_layers", "FgramConfig.d_model", "FgramConfig.num_heads", "FgramConfig.num_kv_heads",
           "FgramConfig.d_ff", "FgramConfig.size", "FgramConfig.max_n")


def _refused(name: str, macros_of: dict[str, set[str]]) -> bool:
  targets = {name} | macros_of.get(name, set())
  return any(t == r or (r.endswith(".") and t.startswith(r)) for t in targets for r in REFUSED)


def check(workdir: str, current_text: str, step: int) -> dict[str, tuple[str | None, str | None]]:
  """Compares the run's saved config with `current_text`; raises UserError on a refused change;
  returns the allowed changes {NAME: (saved, now)} (None: absent on that side)."""
  path = paths.join(workdir, "config.gin")
  if not paths.isfile(path):
    return {}
  saved = C.operative_bindings(paths.read_text(path))
  now = C.operative_bindings(current_text)
  changed = {k: (saved.get(k), now.get(k)) for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)}
  # A macro counts as the bindings that use it (SEQ = 256; DataConfig.seq_len = %SEQ).
  macros_of: dict[str, set[str]] = {}
  for side in (saved, now):
    for k, v in side.items():
      for macro in re.findall(r"%([A-Za-z_]\w*)", v):
        macros_of.setdefault(macro, set()).add(k)
  refused = [k for k in changed if _refused(k, macros_of)]
  if refused:
    shown = ", ".join(f"{k} {_show(changed[k][0])} -> {_show(changed[k][1])}" for k in refused[:6])
    more = f" and {len(refused) - 6} more" if len(refused) > 6 else ""
    raise UserError(f"run {workdir!r} (step {step}) was trained with another model or data shape: {shown}{more}; "
                    "resume with the run's own settings (RUN/config.gin) or pick a new --workdir")
  return changed


def record(workdir: str, step: int, changed: dict) -> None:
  """Appends the allowed changes of a resume to RUN/config_changes.jsonl (a bucket: rewritten whole)."""
  if not changed:
    return
  paths.append_text(paths.join(workdir, CHANGES), json.dumps(
      {"resumed_at_step": step, "changes": {k: {"was": a, "now": b} for k, (a, b) in changed.items()}}) + "\n")


def _show(value: str | None) -> str:
  return "(unset)" if value is None else value
