"""Reading an exported f-gram table: the RAM, disk and remote tiers (docs/METHODS.md 1.5).

  ram     the whole table in host memory (numpy); a fetch is one gather
  disk    rows read through tensorstore from a local store, with a bounded cache (cache_bytes)
  remote  the same reader over any other kvstore URL (gs://, s3://, memory://, ...)

Every tier opens only a finished store (the manifest in its group attributes) and, given the run's identity,
refuses a store of another checkpoint or f-gram file. Opening reads `fgram_tokens` (the matcher
needs it) and checks its hash; the RAM tier checks the embeddings' hash too (it reads them all
anyway); the disk and remote tiers read only the rows they are asked for (every chunk has a
crc32c, and a missing chunk is an error, never a fill value); `scone-jax store verify`
(serve/verify.py) reads a whole store once against its block hashes.

`fetch(ids)` takes distinct f-gram ids and returns a Pending whose `result()` is float rows [n, d]
(the stored float dtype, bfloat16 for a bfloat16 store although its zarr array holds the bits as
uint16; int8 rows come back dequantized to float32). The disk tier issues one
tensorstore read for the whole batch and returns at once, so the caller's host work overlaps it.
"""
from __future__ import annotations

import numpy as np

from scone_jax.errors import UserError
from scone_jax.export import layout as L, manifest as M
from scone_jax.pending import Done, Mapped

TIERS = ("ram", "disk", "remote")
DEFAULT_CACHE_BYTES = 64 << 20


class FgramStore:
  """An opened store: its manifest, its f-gram keys and row fetches."""
  tier = ""

  def __init__(self, url: str, manifest: M.Manifest, fgram_tokens: np.ndarray):
    self.url, self.manifest, self.fgram_tokens = url, manifest, fgram_tokens

  @property
  def layout(self) -> L.Layout:
    return self.manifest.layout

  @property
  def row_dtype(self) -> np.dtype:
    """dtype of the rows `fetch` returns."""
    return np.dtype(np.float32) if self.layout.dtype == "int8" else L.numpy_dtype(self.layout.dtype)

  def fetch(self, ids: np.ndarray):
    """ids int [n] (distinct, 0 <= id < S) -> Pending of rows [n, d]."""
    raise NotImplementedError

  def close(self) -> None:
    pass


class RamStore(FgramStore):
  """The table in host memory."""
  tier = "ram"

  def __init__(self, url, manifest, fgram_tokens, embeddings: np.ndarray, scales: np.ndarray | None):
    super().__init__(url, manifest, fgram_tokens)
    self.embeddings, self.scales = embeddings, scales

  def rows(self, ids: np.ndarray) -> np.ndarray:
    rows = np.take(self.embeddings, ids, axis=0)
    if self.scales is not None:
      rows = rows.astype(np.float32) * np.take(self.scales, ids)[:, None]
    return rows

  def fetch(self, ids):
    return Done(self.rows(np.asarray(ids)))


class Checked:
  """A Pending whose read failure (a chunk failing its crc32c, a vanished file) is a UserError."""

  def __init__(self, pending, url: str):
    self._pending, self._url = pending, url

  def result(self):
    try:
      return L.wait(self._pending, self._url, "reading rows")
    except ValueError as e:
      raise UserError(f"store {self._url!r}: a chunk could not be read ({' '.join(str(e).split())[:200]}); "
                      "the store is corrupted: re-export it with `scone-jax export --restart`") from e


class TensorStoreStore(FgramStore):
  """Rows read on demand through tensorstore (disk or any remote kvstore), with a bounded cache."""

  def __init__(self, url, manifest, fgram_tokens, arrays: dict, tier: str):
    super().__init__(url, manifest, fgram_tokens)
    self.arrays, self.tier = arrays, tier

  def fetch(self, ids):
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size == 0:
      return Done(np.zeros((0, self.layout.dim), self.row_dtype))
    rows = Checked(self.arrays["embeddings"][ids].read(), self.url)
    if "scales" not in self.arrays:
      dtype = self.layout.dtype
      return Mapped(rows, lambda stored: L.as_rows(stored, dtype)) if dtype in L.STORAGE_DTYPES else rows
    scales = Checked(self.arrays["scales"][ids].read(), self.url)
    return Mapped(rows, lambda q: q.astype(np.float32) * scales.result()[:, None])


def open_store(url: str, tier: str = "ram", *, expected: M.Identity | None = None,
               cache_bytes: int = DEFAULT_CACHE_BYTES, verify: bool = True) -> FgramStore:
  """Opens a finished store. expected: the run's identity (refuse a store made from anything
  else); None skips that check (benchmarks on synthetic tables). verify: check the hashes of the
  arrays this tier reads whole."""
  if tier not in TIERS:
    raise UserError(f"--tier {tier!r} is not one of {', '.join(TIERS)}")
  kv = L.open_root(url)
  manifest = M.require(kv, url)
  if expected is not None:
    M.check(manifest, expected, url)
  lay = manifest.layout
  L.check_metadata(kv, url, lay)
  context = L.read_context(cache_bytes)
  arrays = L.open_arrays(url, lay.arrays(), context=context, read_only=True)
  for name, array in arrays.items():
    want = list(lay.metadata(name)["shape"])
    if list(array.shape) != want:
      raise UserError(f"store {url!r}: array {name!r} has shape {list(array.shape)}, the manifest says {want}")
  fgram_tokens = Checked(arrays["fgram_tokens"].read(), url).result()
  if verify:
    _verify(url, manifest, "fgram_tokens", fgram_tokens)
  if tier == "ram":
    embeddings = L.as_rows(Checked(arrays["embeddings"].read(), url).result(), lay.dtype)
    scales = Checked(arrays["scales"].read(), url).result() if "scales" in arrays else None
    if verify:
      _verify(url, manifest, "embeddings", embeddings)
      if scales is not None:
        _verify(url, manifest, "scales", scales)
    return RamStore(url, manifest, fgram_tokens, embeddings, scales)
  return TensorStoreStore(url, manifest, fgram_tokens, arrays, tier)


def _verify(url: str, manifest: M.Manifest, name: str, values: np.ndarray) -> None:
  got = L.array_sha256(values, manifest.layout.rows_per_shard)
  if got != manifest.arrays.get(name):
    raise UserError(f"store {url!r}: array {name!r} does not match the hash in its manifest (corrupted "
                    "or partly rewritten?); re-export with `scone-jax export --restart`")
