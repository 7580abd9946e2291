"""The store's manifest (written last) and the identity a reader checks it against.

The manifest (the root group's zarr.json attribute "scone_jax_manifest", next to its sha256
"scone_jax_manifest_sha256") says what the store holds (dtype, d, S, K, the block layout,
per-array hashes) and what it was made from: the sha256 of the checkpoint's parameters (`checkpoint_sha256`, see
train.restore.params_sha256) and of `fgrams.parquet`. A reader that serves a run refuses a store
whose manifest names another checkpoint or another f-gram file, and a store with no manifest.
"""
from __future__ import annotations

import dataclasses

from scone_jax.errors import UserError
from scone_jax.export import layout as L
from scone_jax.train.restore import LoadedRun, params_sha256

FORMAT = "scone-jax-fgram-store"
VERSION = 2   # 2: the manifest in the group attributes, bfloat16 rows stored as uint16


@dataclasses.dataclass(frozen=True)
class Identity:
  """What a store must have been made from: the run's parameters and f-gram file."""
  checkpoint_sha256: str
  fgrams_sha256: str
  num_rows: int   # S
  dim: int        # d
  max_n: int      # K


def identity_of(run: LoadedRun) -> Identity:
  """What a store exported from this run records; UserError for a run with no f-gram table."""
  method = run.exp.method
  if method.fgram_vocab is None:
    raise UserError(f"run {run.workdir!r} is not a SCONE run (ModelConfig.embedding="
                    f"{run.exp.model.embedding!r}): it has no f-gram table to export or read")
  return Identity(params_sha256(run.params), method.fgrams_sha256(), len(method.fgram_vocab),
                  run.exp.model.d_model, method.max_n)


@dataclasses.dataclass(frozen=True)
class Manifest:
  layout: L.Layout
  checkpoint_sha256: str
  fgrams_sha256: str
  checkpoint_step: int
  vocab_size: int
  arrays: dict          # name -> sha256 (layout.combine_hashes of its blocks)
  format: str = FORMAT
  version: int = VERSION

  def to_json(self) -> dict:
    return {"format": self.format, "version": self.version, **self.layout.to_json(),
            "checkpoint_sha256": self.checkpoint_sha256, "fgrams_sha256": self.fgrams_sha256,
            "checkpoint_step": self.checkpoint_step, "vocab_size": self.vocab_size, "arrays": dict(self.arrays)}

  @classmethod
  def from_json(cls, raw: dict, where: str) -> "Manifest":
    if raw.get("format") != FORMAT or raw.get("version") != VERSION:
      raise UserError(f"{where}: not a {FORMAT} v{VERSION} manifest (format {raw.get('format')!r}, "
                      f"version {raw.get('version')!r}); re-export with `scone-jax export`")
    try:
      lay = L.Layout(**{f.name: raw[f.name] for f in dataclasses.fields(L.Layout)})
      return cls(lay, raw["checkpoint_sha256"], raw["fgrams_sha256"], int(raw["checkpoint_step"]),
                 int(raw["vocab_size"]), dict(raw["arrays"]))
    except (KeyError, TypeError) as e:
      raise UserError(f"{where}: malformed manifest ({e!r}); re-export with `scone-jax export`") from e

  @property
  def identity(self) -> Identity:
    lay = self.layout
    return Identity(self.checkpoint_sha256, self.fgrams_sha256, lay.num_rows, lay.dim, lay.max_n)


def read(kv, url: str) -> Manifest | None:
  """The store's manifest, or None when there is none (an unfinished or empty store). The
  manifest's sha256 must match it (an edited or truncated zarr.json is refused)."""
  where = f"{url}/{L.GROUP}"
  try:
    attrs = L.read_attributes(kv, L.GROUP)
  except ValueError as e:
    raise UserError(f"{where} is not valid JSON ({e}); re-export with `scone-jax export --restart`") from e
  raw = None if attrs is None else attrs.get(L.MANIFEST_ATTR)
  if raw is None:
    return None
  if not isinstance(raw, dict) or attrs.get(L.MANIFEST_SHA_ATTR) != L.manifest_sha256(raw):
    raise UserError(f"{where}: the manifest does not match its sha256 ({L.MANIFEST_SHA_ATTR}): it was edited or "
                    "corrupted; re-export with `scone-jax export --restart`")
  return Manifest.from_json(raw, where)


def is_v1(kv, url: str) -> bool:
  """A store of format v1 (before the manifest moved into the group attributes)."""
  return any(L.wait(kv.read(key), url, f"reading {key}").state == "value" for key in L.V1_KEYS)


def require(kv, url: str) -> Manifest:
  manifest = read(kv, url)
  if manifest is None and is_v1(kv, url):
    raise UserError(f"store {url!r} is in the old store format v1 ({L.V1_MANIFEST}, which zarr-python cannot "
                    "list cleanly): re-export it with `scone-jax export --restart`")
  if manifest is None:   # the words "no manifest.json" stay: scripts match them (stores before v2 had that file)
    raise UserError(f"store {url!r} has no manifest.json or {L.MANIFEST_ATTR} attribute: it is not a finished "
                    "export (run or resume `scone-jax export --workdir RUN --out STORE`)")
  return manifest


def check(manifest: Manifest, expected: Identity, url: str) -> None:
  """Refuses a store made from another checkpoint or f-gram file (one line saying which)."""
  got = manifest.identity
  if got.checkpoint_sha256 != expected.checkpoint_sha256:
    raise UserError(f"store {url!r} was exported from another checkpoint (parameters sha256 "
                    f"{got.checkpoint_sha256[:12]}..., this run's {expected.checkpoint_sha256[:12]}...): "
                    "re-export it from this run with `scone-jax export`")
  if got.fgrams_sha256 != expected.fgrams_sha256:
    raise UserError(f"store {url!r} was exported with another fgrams.parquet (sha256 "
                    f"{got.fgrams_sha256[:12]}..., this run's {expected.fgrams_sha256[:12]}...): re-export it")
  for field in ("num_rows", "dim", "max_n"):
    if getattr(got, field) != getattr(expected, field):
      raise UserError(f"store {url!r} has {field}={getattr(got, field)} but this run needs "
                      f"{getattr(expected, field)}: re-export it")
