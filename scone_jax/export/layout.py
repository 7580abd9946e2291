"""The f-gram embedding store on disk (or any tensorstore kvstore): layout, specs, hashes.

A store is a zarr v3 group written by tensorstore; any kvstore works as its root (a local path,
`file:///dir/`, `memory://`, `gs://bucket/dir/`, `s3://...`):

  zarr.json            the group; its attributes get the manifest ("scone_jax_manifest", with its
                       sha256 "scone_jax_manifest_sha256") last: a store without it is incomplete and refused
  embeddings/          [S, d] float32 | float16 | int8 | bfloat16 stored as uint16 (attribute
                       "scone_jax_dtype": "bfloat16"), row r = f-gram r's embedding E_f[r]
  scales/              [S] float32, int8 stores only: E_f[r] = scales[r] * embeddings[r]
  fgram_tokens/        [S, K] int32: f-gram r's token ids, right-padded with -1 (the matcher's keys)
  progress/            the export's bookkeeping, itself zarr groups (no data) so that zarr-python lists the
                       store without a warning: progress/zarr.json's attributes hold the export's settings,
                       progress/block-NNNNNNNN/zarr.json's the marker of one finished block

`embeddings` and `scales` use the `sharding_indexed` codec: a shard file holds `rows_per_shard`
rows (one export block), cut into inner chunks of `inner_rows` rows (about 32 KiB: a random row
costs one small read, and shards still write at disk speed), stored raw little-endian (f-gram
embeddings do not compress). `fgram_tokens` has one plain chunk per block. zarr-python 3 opens
every store as it is (it has no bfloat16 data type, hence uint16 + `np.asarray(a).view(ml_dtypes.bfloat16)`;
docs/METHODS.md 1.5 has the recipe).

Hashes: a block's hash is the sha256 of its rows' bytes (C order, little-endian, stored dtype);
an array's hash is the sha256 of its blocks' hex digests joined in block order, so each process
can hash the rows it wrote and a reader of the whole array can recompute it.
"""
from __future__ import annotations

import atexit
import contextlib
import dataclasses
import hashlib
import json
import os

import ml_dtypes
import numpy as np
import tensorstore as ts

from scone_jax import native_log
from scone_jax.errors import UserError

DTYPES = ("float32", "bfloat16", "float16", "int8")
DEFAULT_DTYPE = "float16"   # `export --dtype`: half the bytes of float32, read by every tool (zarr, numpy); the tests export float32
ARRAYS = ("embeddings", "scales", "fgram_tokens")
GROUP = "zarr.json"
V1_MANIFEST = "manifest.json"   # where store format v1 kept its manifest (refused: re-export)
V1_KEYS = (V1_MANIFEST, "progress/config.json")
MANIFEST_ATTR = "scone_jax_manifest"
MANIFEST_SHA_ATTR = "scone_jax_manifest_sha256"
DTYPE_ATTR = "scone_jax_dtype"
CONFIG_ATTR = "scone_jax_export_config"
BLOCK_ATTR = "scone_jax_block"
PROGRESS = "progress/zarr.json"
BLOCK_PREFIX = "progress/block-"
STORAGE_DTYPES = {"bfloat16": "uint16"}   # zarr v3 data type of a row dtype zarr-python lacks
INNER_CHUNK_BYTES = 32768
SHARD_BYTES = 32 << 20

_CONTEXT = None


def shared_context():
  """One tensorstore Context per process: a `memory://` store written by the exporter is the
  one a reader in the same process opens (a fresh context would see an empty memory kvstore)."""
  global _CONTEXT
  if _CONTEXT is None:
    _CONTEXT = ts.Context()
  return _CONTEXT


def read_context(cache_bytes: int, concurrency: int = 64):
  """A child of the shared context with its own bounded cache pool and I/O concurrency."""
  spec = {"cache_pool": {"total_bytes_limit": int(cache_bytes)},
          "file_io_concurrency": {"limit": int(concurrency)}}
  return ts.Context(ts.Context.Spec(spec), parent=shared_context())


def kvstore_spec(url: str) -> dict:
  """A tensorstore kvstore spec (JSON) for a local path or a kvstore URL, its path ending in '/'."""
  if "://" in url:
    try:
      spec = ts.KvStore.Spec(url).to_json()
    except ValueError as e:
      raise UserError(f"store {url!r} is not a tensorstore kvstore URL ({e}); use a path, file://, "
                      "memory://, gs:// or s3://") from e
  else:
    spec = {"driver": "file", "path": os.path.abspath(url)}
  path = spec.get("path", "")
  if path and not path.endswith("/"):
    spec["path"] = path + "/"
  return spec


def child(spec: dict, name: str) -> dict:
  return {**spec, "path": spec.get("path", "") + name.rstrip("/") + "/"}


REMOTE_TIMEOUT_S = float(os.environ.get("SCONE_JAX_REMOTE_TIMEOUT", "120"))
LOCAL_SCHEMES = ("file://", "memory://")
_remote_reached = False   # a remote store has answered (or failed) once in this process
_pending = None           # (ExitStack, Captured): fd 2 captured from the first remote open to the first answer


def wait(future, url: str, what: str, *, request: bool = True):
  """future.result(), but a store that does not answer within REMOTE_TIMEOUT_S (an unreachable
  bucket, missing credentials, a dead network) is a one-line UserError instead of a hang. From the
  first remote wait of a process until its first remote request is answered, fd 2 stays captured
  (native_log.py): a request is issued before it is waited for, so a capture that began only at
  the request's own wait could miss tensorstore's native auth log line; the captured line says
  why a store could not be reached."""
  global _remote_reached, _pending
  remote = "://" in url and not url.startswith(LOCAL_SCHEMES)
  log = None
  if remote and not _remote_reached:
    if _pending is None:
      stack = contextlib.ExitStack()
      _pending = (stack, stack.enter_context(native_log.captured()))
      atexit.register(_end_capture)   # a process that never gets an answer still writes back its output
    log = _pending[1]
  try:
    return future.result(timeout=REMOTE_TIMEOUT_S)
  except TimeoutError:
    if log is not None:
      log.keep_capturing()   # the request goes on in tensorstore's threads: its late log lines too
  finally:
    if remote and request:   # opening a kvstore sends no request: the auth comes with the first one
      _remote_reached = True
      _end_capture()
  raise UserError(f"store {url!r} did not answer within {REMOTE_TIMEOUT_S:.0f} s ({what}): check the URL, the "
                  f"network and the credentials{_why(log)} (SCONE_JAX_VERBOSE=1 shows tensorstore's log; "
                  "SCONE_JAX_REMOTE_TIMEOUT sets the limit in seconds)")


def _end_capture() -> None:
  global _pending
  if _pending is not None:
    stack, _pending = _pending[0], None
    stack.close()   # fills the Captured's lines and writes back everything but native log lines


def _why(log) -> str:
  if log is not None and log.mentions("credentials"):
    return (" (no Google Cloud credentials were found: set GOOGLE_APPLICATION_CREDENTIALS or run "
            "`gcloud auth application-default login`, unless this host gets them from its metadata server)")
  return ""


def open_root(url: str):
  """The store's root as a tensorstore KvStore (keys relative to the root)."""
  return wait(ts.KvStore.open(kvstore_spec(url), context=shared_context()), url, "opening it", request=False)


def read_json(kv, key: str):
  """The JSON value at `key`, or None if there is no such key."""
  r = wait(kv.read(key), kv.url if hasattr(kv, "url") else str(key), f"reading {key}")
  if r.state != "value":
    return None
  return json.loads(bytes(r.value).decode())


def write_json(kv, key: str, value) -> None:
  kv.write(key, json.dumps(value, indent=2, sort_keys=True).encode()).result()


def group_json(attributes: dict) -> dict:
  """A zarr v3 group's zarr.json."""
  return {"zarr_format": 3, "node_type": "group", "attributes": attributes}


def read_attributes(kv, key: str) -> dict | None:
  """The attributes of the group whose zarr.json is `key`, or None if there is none."""
  raw = read_json(kv, key)
  return None if raw is None else dict(raw.get("attributes") or {})


def manifest_sha256(manifest: dict) -> str:
  """sha256 of a manifest's canonical JSON (sorted keys, no spaces): what the group attributes record."""
  return hashlib.sha256(json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_manifest_attributes(kv, manifest: dict | None) -> None:
  """Rewrites the root group's zarr.json with the manifest and its sha256 (None: without them)."""
  attrs = {} if manifest is None else {MANIFEST_ATTR: manifest, MANIFEST_SHA_ATTR: manifest_sha256(manifest)}
  write_json(kv, GROUP, group_json(attrs))


def read_config(kv):
  """The export settings recorded in progress/zarr.json, or None."""
  attrs = read_attributes(kv, PROGRESS)
  return None if attrs is None else attrs.get(CONFIG_ATTR)


def write_config(kv, config: dict) -> None:
  write_json(kv, PROGRESS, group_json({CONFIG_ATTR: config}))


def storage_dtype(dtype: str) -> str:
  """The zarr v3 data type an embeddings array of row dtype `dtype` is stored as."""
  return STORAGE_DTYPES.get(dtype, dtype)


def as_rows(stored: np.ndarray, dtype: str) -> np.ndarray:
  """Rows read back (stored dtype) -> rows in the row dtype (the same bytes: a view)."""
  return stored.view(numpy_dtype(dtype)) if dtype in STORAGE_DTYPES else stored


def to_storage(rows: np.ndarray, dtype: str) -> np.ndarray:
  """Rows in the row dtype -> the stored dtype (the same bytes: a view)."""
  return rows.view(np.dtype(storage_dtype(dtype))) if dtype in STORAGE_DTYPES else rows


def inner_rows_for(dim: int, dtype: str, rows_per_shard: int) -> int:
  """Rows per inner chunk: the largest power of two whose chunk fits INNER_CHUNK_BYTES (>= 1),
  dividing rows_per_shard."""
  row_bytes = dim * np.dtype(_np_dtype(dtype)).itemsize
  rows = 1
  while rows * 2 * row_bytes <= INNER_CHUNK_BYTES and rows_per_shard % (rows * 2) == 0:
    rows *= 2
  return rows


def default_rows_per_shard(num_rows: int, dim: int, dtype: str) -> int:
  """A power of two near SHARD_BYTES per shard, but no more than the table needs."""
  row_bytes = dim * np.dtype(_np_dtype(dtype)).itemsize
  rows = 64
  while rows * 2 * row_bytes <= SHARD_BYTES and rows < num_rows:
    rows *= 2
  return rows


def _np_dtype(dtype: str):
  if dtype == "bfloat16":
    return ml_dtypes.bfloat16
  return np.dtype(dtype)


def numpy_dtype(dtype: str) -> np.dtype:
  return np.dtype(_np_dtype(dtype))


@dataclasses.dataclass(frozen=True)
class Layout:
  """The shape of a store: S rows of width d in `dtype`, f-grams up to K tokens, in blocks
  (= shards) of rows_per_shard rows."""
  num_rows: int
  dim: int
  max_n: int
  dtype: str
  rows_per_shard: int
  inner_rows: int

  @property
  def num_blocks(self) -> int:
    return -(-self.num_rows // self.rows_per_shard)

  def block_rows(self, block: int) -> tuple[int, int]:
    lo = block * self.rows_per_shard
    return lo, min(self.num_rows, lo + self.rows_per_shard)

  def arrays(self) -> tuple[str, ...]:
    return ARRAYS if self.dtype == "int8" else ("embeddings", "fgram_tokens")

  def metadata(self, name: str) -> dict:
    """zarr v3 array metadata of one array of the store."""
    # crc32c after every chunk: tensorstore (and zarr-python) verify it on each read, so the disk
    # and remote tiers, which never read a whole array, still detect a corrupted chunk.
    raw = [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}]
    if name == "fgram_tokens":
      return {"shape": [self.num_rows, self.max_n], "data_type": "int32", "fill_value": -1,
              "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [self.rows_per_shard, self.max_n]}},
              "codecs": raw}
    if name == "embeddings":
      shape, chunk, inner, dtype = [self.num_rows, self.dim], [self.rows_per_shard, self.dim], \
          [self.inner_rows, self.dim], storage_dtype(self.dtype)
    else:  # scales: 4 bytes a row, so an inner chunk of the same byte size holds more rows
      inner_scales = self.rows_per_shard
      while inner_scales > 1 and inner_scales * 4 > INNER_CHUNK_BYTES:
        inner_scales //= 2
      shape, chunk, inner, dtype = [self.num_rows], [self.rows_per_shard], [inner_scales], "float32"
    sharding = {"name": "sharding_indexed", "configuration": {
        "chunk_shape": inner, "codecs": raw,
        "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}],
        "index_location": "end"}}
    meta = {"shape": shape, "data_type": dtype, "fill_value": 0,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": chunk}},
            "codecs": [sharding]}
    if name == "embeddings":   # what the numbers are: int8 rows are scaled, uint16 ones are bfloat16 bits
      meta["attributes"] = {DTYPE_ATTR: self.dtype}
    return meta

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


def array_spec(url: str, name: str) -> dict:
  return {"driver": "zarr3", "kvstore": child(kvstore_spec(url), name)}


def create_arrays(url: str, layout: Layout) -> None:
  """Writes the group and the arrays' metadata (no data) into an empty store."""
  root = open_root(url)
  write_json(root, GROUP, group_json({}))
  for name in layout.arrays():
    ts.open({**array_spec(url, name), "metadata": layout.metadata(name)}, create=True, open=True,
            context=shared_context()).result()


def open_arrays(url: str, names, *, context=None, read_only: bool = False) -> dict:
  """{name: ts.TensorStore} of existing arrays. Readers pass a context with a bounded cache; the
  store is immutable once complete, so cached data is never rechecked. A reader never sees a fill
  value in place of data: a chunk that is missing (deleted, never written) is an error."""
  out = {}
  for name in names:
    spec = array_spec(url, name)
    if read_only:
      spec.update(recheck_cached_data="open", recheck_cached_metadata="open", fill_missing_data_reads=False)
    try:
      out[name] = wait(ts.open(spec, context=context or shared_context(), read=True, write=not read_only), url,
                       f"opening array {name}")
    except ValueError as e:
      raise UserError(f"store {url!r}: cannot open array {name!r} ({' '.join(str(e).split())})") from e
  return out


def _chunking(meta: dict) -> tuple:
  """What a reader relies on in an array's zarr.json: shape, dtype, chunk grid, inner chunks and
  the codec chain (crc32c included)."""
  codecs = meta.get("codecs") or [{}]
  inner = codecs[0].get("configuration", {})
  return (list(meta.get("shape", [])), meta.get("data_type"), meta.get("chunk_grid"), inner.get("chunk_shape"),
          [c.get("name") for c in codecs], [c.get("name") for c in inner.get("codecs", [])])


def check_metadata(kv, url: str, layout: "Layout") -> None:
  """Every array's stored metadata agrees with the manifest's layout (UserError if not)."""
  for name in layout.arrays():
    stored = read_json(kv, f"{name}/zarr.json")
    if stored is None:
      raise UserError(f"store {url!r}: array {name!r} has no zarr.json; re-export with `scone-jax export --restart`")
    if _chunking(stored) != _chunking(layout.metadata(name)):
      raise UserError(f"store {url!r}: array {name!r} is stored as {_chunking(stored)[:4]} but the manifest says "
                      f"{_chunking(layout.metadata(name))[:4]}; re-export with `scone-jax export --restart`")


def block_key(block: int) -> str:
  """The zarr.json of block `block`'s marker group."""
  return f"{BLOCK_PREFIX}{block:08d}/{GROUP}"


def write_marker(kv, block: int, marker: dict) -> None:
  write_json(kv, block_key(block), group_json({BLOCK_ATTR: marker}))


def delete_marker(kv, block: int) -> None:
  """Removes a block's marker group (its directory too: zarr-python would warn about an empty one)."""
  folder = f"{BLOCK_PREFIX}{block:08d}/"
  kv.delete_range(_prefix_range(folder)).result()
  spec = kv.spec().to_json()
  if spec.get("driver") == "file":   # tensorstore's file kvstore keeps the emptied directory
    with contextlib.suppress(OSError):
      os.rmdir(os.path.join(spec.get("path", ""), folder))


def finished_blocks(kv) -> dict[int, dict]:
  """{block: marker} of every block the export recorded as written."""
  out = {}
  suffix = "/" + GROUP
  for key in kv.list(range=_prefix_range(BLOCK_PREFIX)).result():
    key = bytes(key).decode()
    if key.endswith(suffix):
      out[int(key[len(BLOCK_PREFIX):-len(suffix)])] = (read_attributes(kv, key) or {}).get(BLOCK_ATTR)
  return {b: m for b, m in out.items() if m is not None}


def _prefix_range(prefix: str):
  return ts.KvStore.KeyRange(prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1))


def delete_all(kv) -> None:
  """Removes every key of the store (the kvstore's whole range below its root)."""
  kv.delete_range(ts.KvStore.KeyRange()).result()


def sha256_of(array: np.ndarray) -> str:
  """sha256 of an array's bytes, C order, little-endian."""
  a = np.ascontiguousarray(array)
  if a.dtype.byteorder == ">":
    a = a.astype(a.dtype.newbyteorder("<"))
  return hashlib.sha256(memoryview(a.reshape(-1).view(np.uint8))).hexdigest()


def combine_hashes(block_hashes: list[str]) -> str:
  """An array's hash from its blocks' hashes (in block order)."""
  return hashlib.sha256("".join(block_hashes).encode()).hexdigest()


def array_sha256(array: np.ndarray, rows_per_shard: int) -> str:
  """The hash of a whole array read back, computed as the exporter does it block by block."""
  return combine_hashes([sha256_of(array[lo:lo + rows_per_shard]) for lo in range(0, len(array), rows_per_shard)])
