"""`scone-jax store verify STORE`: read a finished store once and check every block's hash.

What each tier checks on its own (serve/store.py): the manifest exists, every array's zarr.json
agrees with it, `fgram_tokens` matches its hash, every chunk read passes its crc32c and a missing
chunk is an error; the RAM tier also hashes the whole table it loads. What only this command
checks: that every block the disk and remote tiers may read still holds the bytes the export
wrote (a chunk rewritten with a valid crc32c, e.g. by another export over part of the store, or
a shard file copied from another store). It reads the table once, block by block (at most
READS_IN_FLIGHT blocks in memory), compares each block with its export marker
(the attributes of `progress/block-N/zarr.json`) and each array's combined hash with the manifest.

`--repair` deletes the manifest and the markers of the blocks that failed: the same `export`
command then rewrites only those blocks and writes a new manifest (a 10^9-row store is not
re-exported whole for one bad shard).
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures
import time

from scone_jax.errors import UserError
from scone_jax.export import layout as L, manifest as M
from scone_jax.progress import progress_bar
from scone_jax.serve.store import Checked

READS_IN_FLIGHT = 4


def add_arguments(p: argparse.ArgumentParser) -> None:
  p.add_argument("store", help="the store: a directory or a tensorstore kvstore URL (gs://, file://, memory://)")
  p.add_argument("--workdir", default=None, help="also check that the store was exported from this run's "
                 "checkpoint and f-gram file")
  p.add_argument("--repair", action="store_true", help="delete the manifest and the markers of bad blocks, so "
                 "that rerunning `scone-jax export` rewrites just those blocks")
  p.add_argument("--progress", action="store_true", help="show progress even when stderr is not a TTY")


def verify_store(url: str, *, progress: bool | None = False) -> dict:
  """Reads every block of a finished store. Returns {manifest, bad: {block: [array names]},
  unmarked: [blocks without a marker], mismatched: [arrays whose combined hash differs from the
  manifest], bytes, seconds}."""
  t0 = time.perf_counter()
  kv = L.open_root(url)
  manifest = M.require(kv, url)
  lay = manifest.layout
  L.check_metadata(kv, url, lay)
  arrays = L.open_arrays(url, lay.arrays(), read_only=True)
  markers = L.finished_blocks(kv)
  bad: dict[int, list[str]] = {}
  block_hashes: dict[str, list[str]] = {name: [] for name in lay.arrays()}
  total = 0

  def read_block(block: int) -> dict[str, str]:
    lo, hi = lay.block_rows(block)
    pending = {name: Checked(array[lo:hi].read(), url) for name, array in arrays.items()}
    return {name: L.sha256_of(p.result()) for name, p in pending.items()}

  with concurrent.futures.ThreadPoolExecutor(max_workers=READS_IN_FLIGHT) as pool, \
       progress_bar("verifying (blocks)", lay.num_blocks, enabled=progress) as bar:
    reads: collections.deque = collections.deque()

    def collect():
      nonlocal total
      block, future = reads.popleft()
      got = future.result()
      want = markers.get(block, {}).get("sha256", {})
      wrong = [name for name in lay.arrays() if want and got[name] != want.get(name)]
      if wrong:
        bad[block] = wrong
      for name in lay.arrays():
        block_hashes[name].append(got[name])
      lo, hi = lay.block_rows(block)
      total += (hi - lo) * sum(row_bytes(lay, name) for name in lay.arrays())
      bar.advance()

    for block in range(lay.num_blocks):   # in order: the combined hashes are over blocks in order
      reads.append((block, pool.submit(read_block, block)))
      if len(reads) >= READS_IN_FLIGHT:
        collect()
    while reads:
      collect()
  mismatched = [name for name in lay.arrays() if L.combine_hashes(block_hashes[name]) != manifest.arrays.get(name)]
  unmarked = [b for b in range(lay.num_blocks) if b not in markers]
  return {"manifest": manifest, "bad": bad, "unmarked": unmarked, "mismatched": mismatched, "bytes": total,
          "seconds": time.perf_counter() - t0}


def row_bytes(lay: L.Layout, name: str) -> int:
  meta = lay.metadata(name)
  width = meta["shape"][1] if len(meta["shape"]) > 1 else 1
  return width * L.numpy_dtype(meta["data_type"]).itemsize


def run(args) -> int:
  url = args.store
  if args.workdir is not None:
    from scone_jax.train.restore import load_run
    expected = M.identity_of(load_run(args.workdir))
    M.check(M.require(L.open_root(url), url), expected, url)
  import sys
  report = verify_store(url, progress=args.progress or (None if sys.stderr.isatty() else False))
  lay, bad, mismatched = report["manifest"].layout, report["bad"], report["mismatched"]
  rate = report["bytes"] / max(report["seconds"], 1e-9) / 1e6
  if not bad and not mismatched:
    print(f"{url}: {lay.num_blocks} blocks, {lay.num_rows:,} rows x {lay.dim} ({lay.dtype}) match their hashes "
          f"({report['bytes'] / 1e6:.1f} MB read in {report['seconds']:.1f} s, {rate:.0f} MB/s)")
    return 0
  if not bad:   # every block matches its marker (or has none) but an array's combination does not
    blocks = report["unmarked"] or list(range(lay.num_blocks))
    what = f"arrays {mismatched} do not match the manifest's hashes"
  else:
    blocks = sorted(bad)
    what = f"blocks {blocks[:8]}{' ...' if len(blocks) > 8 else ''} ({len(blocks)} of {lay.num_blocks}) do not match their hashes"
  if args.repair:
    kv = L.open_root(url)
    L.write_manifest_attributes(kv, None)
    for block in blocks:
      L.delete_marker(kv, block)
    raise UserError(f"store {url!r}: {what}; their markers and the manifest are deleted: rerun the same "
                    "`scone-jax export --workdir RUN --out STORE` to rewrite them")
  raise UserError(f"store {url!r}: {what}; pass --repair, then rerun `scone-jax export` to rewrite them "
                  "(or re-export with --restart)")
