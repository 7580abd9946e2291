"""`scone-jax export`: A_f over every f-gram, once, into a zarr v3 store (docs/METHODS.md 1.5).

The rows are cut into blocks of `rows_per_shard` f-grams, one shard file per block (layout.py).
Pending blocks are dealt round-robin to the processes; at each step every process runs A_f on its
block (in `batch_rows` pieces) as one jitted call over the whole mesh (rows split over the batch
axes, each process feeding the f-grams of its own block), and then writes only its own block —
so no two processes ever touch one shard file. Writing and hashing run on a thread pool while the
next block computes. After a block is committed, a marker `progress/block-N.json` with its hashes
(a zarr group `progress/block-N/` whose attributes hold its hashes) is written; a rerun skips
every marked block (resume), `--restart` deletes the store first. The manifest is written last,
into the root group's attributes, by process 0, once every block is marked: an interrupted export
never leaves a store that looks complete.
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding

from scone_jax import parallel
from scone_jax.config import flag_range
from scone_jax.errors import UserError
from scone_jax.export import layout as L, manifest as M
from scone_jax.outputs import check_output
from scone_jax.progress import progress_bar
from scone_jax.train import identity as run_identity
from scone_jax.train.restore import load_run

# (tokens [n, K] int32, lengths [n] int32) of this process's rows -> (rows [n, d] stored dtype,
# scales [n] float32 or None)
RowsFn = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray | None]]
PENDING_WRITES = 4  # blocks written in the background while the next one computes


def add_arguments(p: argparse.ArgumentParser) -> None:
  p.add_argument("--workdir", required=True, help="a SCONE run directory written by `scone-jax train` "
                 "(any run with --format safetensors)")
  p.add_argument("--out", required=True, help="the store: a directory, or a tensorstore kvstore URL "
                 "(file:///dir/, gs://bucket/dir/, memory://); a local directory with --format safetensors")
  p.add_argument("--format", default="zarr", choices=("zarr", "safetensors"),
                 help="zarr: the f-gram table as a store; safetensors: the main model (Llama names and config.json "
                 "for the baseline architecture) and, for SCONE, the table of --store (export/hf.py)")
  p.add_argument("--store", default=None, help="--format safetensors, SCONE runs: the finished zarr store "
                 "(`scone-jax export`) whose rows go into fgram_table.safetensors")
  p.add_argument("--dtype", default=None, choices=L.DTYPES,
                 help=f"stored dtype; int8 adds a per-row scale (default: {L.DEFAULT_DTYPE}); --format safetensors: "
                 "float32 (the default), float16 or bfloat16")
  p.add_argument("--step", type=flag_range(0), default=None, help="checkpoint step (default: newest)")
  p.add_argument("--rows_per_shard", type=flag_range(0), default=0, help="f-grams per shard file / block (0 = about 32 MiB)")
  p.add_argument("--batch_rows", type=flag_range(0), default=0, help="f-grams per process per A_f call (0 = a whole block)")
  p.add_argument("--restart", action="store_true", help="delete the store and start over instead of resuming")
  p.add_argument("--stop_after_blocks", type=flag_range(1), default=None,
                 help="stop after this many blocks per process (the export resumes later)")
  p.add_argument("--allow_other_data", action="store_true",
                 help="use the run although its DATA_DIR or f-gram file changed since it trained (on purpose)")
  p.add_argument("--progress", action="store_true", help="show progress even when stderr is not a TTY")
  p.add_argument("--coordinator_address", default=None, help="multi-host: HOST:PORT of process 0")
  p.add_argument("--num_processes", type=flag_range(1), default=None)
  p.add_argument("--process_id", type=flag_range(0), default=None)
  p.add_argument("--startup_timeout_seconds", type=flag_range(1), default=300,
                 help="multi-host: stop with an error if the processes have not all met by then")


def run(args) -> int:
  if args.format == "safetensors":
    from scone_jax.export import hf
    args.dtype = args.dtype or "float32"   # the model's own precision unless asked otherwise
    return hf.run(args)
  args.dtype = args.dtype or L.DEFAULT_DTYPE
  if args.store is not None:
    raise UserError("--store is for --format safetensors (a zarr export computes the table itself): drop it")
  parallel.initialize_distributed(args.coordinator_address, args.num_processes, args.process_id,
                                  startup_timeout_seconds=args.startup_timeout_seconds, command="export")
  with run_identity.run_lock(args.workdir, shared=True):   # no training of this run meanwhile
    return _export(args)


def _export(args) -> int:
  run_ = load_run(args.workdir, step=args.step, allow_other_data=args.allow_other_data)
  local = args.out.removeprefix("file://")
  if "://" not in local:   # the output guard (outputs.py): a store never lands in what it reads
    check_output(local, "store", inputs={"--workdir": args.workdir, **run_.exp.input_dirs()})
  identity = M.identity_of(run_)
  vocab = run_.exp.method.fgram_vocab
  rows_per_shard = args.rows_per_shard or L.default_rows_per_shard(len(vocab), identity.dim, args.dtype)
  if rows_per_shard < 1 or rows_per_shard & (rows_per_shard - 1):
    raise UserError(f"--rows_per_shard {rows_per_shard} must be a power of two")
  batch_rows = args.batch_rows or rows_per_shard
  if rows_per_shard % batch_rows:
    raise UserError(f"--batch_rows {batch_rows} must divide --rows_per_shard {rows_per_shard}")
  layout = L.Layout(len(vocab), identity.dim, identity.max_n, args.dtype, rows_per_shard,
                    L.inner_rows_for(identity.dim, args.dtype, rows_per_shard))
  tokens, lengths = vocab.token_matrix()
  rows_fn = AfRows(run_.trainer, run_.params, args.dtype)
  show = jax.process_index() == 0 and (args.progress or sys.stderr.isatty())
  summary = export_table(args.out, layout, tokens, lengths, rows_fn, identity, step=run_.step,
                         vocab_size=run_.exp.model.vocab_size, restart=args.restart, batch_rows=batch_rows,
                         stop_after_blocks=args.stop_after_blocks, progress=show)
  if jax.process_index() == 0:
    if summary["already_complete"]:
      print(f"{args.out}: already a complete export of this checkpoint ({layout.num_rows:,} rows, {args.dtype})")
    elif summary["complete"]:
      print(f"exported {layout.num_rows:,} f-gram embeddings x {layout.dim} ({args.dtype}) to {args.out}: "
            f"{summary['blocks_written']} blocks written, {summary['blocks_skipped']} resumed, "
            f"{summary['seconds']:.1f} s, {summary['bytes_written'] / max(summary['seconds'], 1e-9) / 1e6:.1f} MB/s")
    else:
      print(f"stopped after {summary['blocks_written']} blocks: {args.out} is incomplete (no manifest); "
            "rerun the same command to resume")
  return 0


def to_store_dtype(rows_f32, dtype: str):
  """float32 rows [n, d] -> (rows in the stored dtype, float32 scales [n] for int8 else None).
  int8: scale = max|row| / 127, q = round(row / scale) (0 where the row is all zero)."""
  if dtype != "int8":
    return rows_f32.astype(jnp.dtype(L.numpy_dtype(dtype))), None
  scale = jnp.max(jnp.abs(rows_f32), axis=-1) / 127.0
  safe = jnp.where(scale > 0, scale, 1.0)
  q = jnp.clip(jnp.round(rows_f32 / safe[:, None]), -127, 127).astype(jnp.int8)
  return q, scale


class AfRows:
  """A_f of a restored run as a RowsFn: one jitted call over the trainer's mesh per batch, the
  global batch assembled from every process's rows, each process getting its own rows back."""

  def __init__(self, trainer, params, dtype: str):
    self.trainer, self.params, self.dtype = trainer, params, dtype
    mesh = trainer.mesh
    self.row2d = NamedSharding(mesh, parallel.logical_to_spec(("unique_fgrams", None)))
    self.row1d = NamedSharding(mesh, parallel.logical_to_spec(("unique_fgrams",)))

    def rows(params, tokens_UxK, lengths_U):
      model = trainer.model(params)
      emb = model.input_embedding.fgram_embeddings(model, tokens_UxK, lengths_U)
      return to_store_dtype(emb.astype("float32"), dtype)

    out_shardings = (self.row2d, self.row1d if dtype == "int8" else None)
    self._fn = jax.jit(rows, in_shardings=(trainer.param_shardings, self.row2d, self.row1d),
                       out_shardings=out_shardings)

  def __call__(self, tokens: np.ndarray, lengths: np.ndarray):
    n = len(tokens)
    local_devices = self.trainer.batch_devices // jax.process_count()
    if n % max(local_devices, 1):
      raise UserError(f"{n} f-grams per process per call do not split over this process's {local_devices} "
                      "batch devices: pick --rows_per_shard / --batch_rows divisible by it")
    total = n * jax.process_count()
    tok = jax.make_array_from_process_local_data(self.row2d, tokens, (total, tokens.shape[1]))
    ln = jax.make_array_from_process_local_data(self.row1d, lengths, (total,))
    with jax.set_mesh(self.trainer.mesh):
      rows, scales = self._fn(self.params, tok, ln)
    return _local_rows(rows, n), None if scales is None else _local_rows(scales, n)


def _local_rows(array, n: int) -> np.ndarray:
  """This process's contiguous rows of a row-sharded global array, in order."""
  pieces = {}
  for shard in array.addressable_shards:
    pieces.setdefault(shard.index[0].start or 0, shard.data)
  starts = sorted(pieces)
  out = np.concatenate([np.asarray(pieces[s]) for s in starts])
  assert len(out) == n and starts[0] + n == (starts[-1] + len(pieces[starts[-1]])), "rows not contiguous"
  return out


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def export_table(url: str, layout: L.Layout, tokens: np.ndarray, lengths: np.ndarray, rows_fn: RowsFn,
                 identity: M.Identity, *, step: int = 0, vocab_size: int = 0, restart: bool = False,
                 batch_rows: int = 0, stop_after_blocks: int | None = None, progress: bool = False) -> dict:
  """Writes (or resumes, or restarts) the store at `url`; returns a summary dict
  {complete, already_complete, blocks_written, blocks_skipped, bytes_written, seconds}."""
  t0 = time.perf_counter()
  pid, nproc = jax.process_index(), jax.process_count()
  batch_rows = batch_rows or layout.rows_per_shard
  kv = L.open_root(url)
  config = {"layout": layout.to_json(), "identity": dataclasses.asdict(identity), "checkpoint_step": step,
            "vocab_size": vocab_size}
  summary = dict(complete=False, already_complete=False, blocks_written=0, blocks_skipped=0, bytes_written=0)
  existing = M.read(kv, url)
  progress_config = L.read_config(kv)
  ours = existing is not None or progress_config is not None
  if not ours and M.is_v1(kv, url):
    if not restart:
      raise UserError(f"store {url!r} is in the old store format v1 ({L.V1_MANIFEST}): pass --restart to "
                      "re-export it in the current format, or pick another --out")
    ours = True
  if not ours and L.wait(kv.list(), url, "listing it"):
    raise UserError(f"store {url!r} is not empty and holds no scone-jax export: pick an empty or new --out")
  _barrier("export-inspect")
  if restart and ours:
    if pid == 0:
      L.delete_all(kv)
    existing = progress_config = None
  elif existing is not None:
    if existing.identity == identity and existing.layout == layout:
      return {**summary, "complete": True, "already_complete": True, "seconds": time.perf_counter() - t0}
    raise UserError(f"store {url!r} holds a finished export of another checkpoint, f-gram file or layout "
                    "(dtype, rows_per_shard): pass --restart to overwrite it, or pick another --out")
  elif progress_config is not None and progress_config != config:
    raise UserError(f"store {url!r} holds an unfinished export with other settings (checkpoint, f-grams, "
                    "dtype or rows_per_shard): pass --restart to start over")
  if pid == 0 and progress_config is None:
    L.create_arrays(url, layout)
    L.write_config(kv, config)
  _barrier("export-created")
  arrays = L.open_arrays(url, layout.arrays())
  done = L.finished_blocks(kv)
  _barrier("export-listed")   # every process sees the same finished blocks before any new marker
  pending = [b for b in range(layout.num_blocks) if b not in done]
  mine = pending[pid::nproc]
  steps = -(-len(pending) // nproc)
  if stop_after_blocks is not None:
    steps = min(steps, stop_after_blocks)
  summary["blocks_skipped"] = len(done)
  pool = concurrent.futures.ThreadPoolExecutor(max_workers=PENDING_WRITES)
  writes: collections.deque = collections.deque()
  with progress_bar("export (blocks)", len(pending), enabled=progress) as bar:
    try:
      for i in range(steps):
        block = mine[i] if i < len(mine) else None
        lo, hi = layout.block_rows(block) if block is not None else (0, 0)
        # Every process makes the same calls (collectives); one without a block feeds padding.
        block_tokens = np.zeros((layout.rows_per_shard, layout.max_n), np.int32)
        block_lengths = np.full(layout.rows_per_shard, 2, np.int32)
        block_tokens[:hi - lo], block_lengths[:hi - lo] = tokens[lo:hi], lengths[lo:hi]
        parts = [rows_fn(block_tokens[j:j + batch_rows], block_lengths[j:j + batch_rows])
                 for j in range(0, layout.rows_per_shard, batch_rows)]
        if block is None:
          continue
        rows = np.concatenate([p[0] for p in parts])[:hi - lo]
        scales = None if parts[0][1] is None else np.concatenate([p[1] for p in parts])[:hi - lo]
        while len(writes) >= PENDING_WRITES:
          summary["bytes_written"] += writes.popleft().result()
          bar.advance(nproc)
        writes.append(pool.submit(_write_block, kv, arrays, layout, block, rows, scales, tokens[lo:hi], pid))
      while writes:
        summary["bytes_written"] += writes.popleft().result()
        bar.advance(nproc)
    finally:
      pool.shutdown(wait=True)
  summary["blocks_written"] = min(steps, len(mine))
  _barrier("export-written")
  if pid == 0 and len(L.finished_blocks(kv)) == layout.num_blocks:
    write_manifest(kv, url, layout, identity, step, vocab_size)
  _barrier("export-manifest")
  summary["complete"] = M.read(kv, url) is not None
  summary["seconds"] = time.perf_counter() - t0
  return summary


def _write_block(kv, arrays: dict, layout: L.Layout, block: int, rows: np.ndarray, scales, tokens,
                 process: int) -> int:
  """Writes one block's rows, waits for the commit, then records the block's marker. Returns the
  bytes written."""
  lo, hi = layout.block_rows(block)
  data = {"embeddings": L.to_storage(rows, layout.dtype), "fgram_tokens": tokens}
  if scales is not None:
    data["scales"] = scales
  futures = [arrays[name][lo:hi].write(value) for name, value in data.items()]
  hashes = {name: L.sha256_of(value) for name, value in data.items()}  # while tensorstore writes
  for f in futures:
    f.result()
  L.write_marker(kv, block, {"block": block, "rows": [lo, hi], "sha256": hashes, "process": process})
  return sum(v.nbytes for v in data.values())


def write_manifest(kv, url: str, layout: L.Layout, identity: M.Identity, step: int, vocab_size: int) -> M.Manifest:
  """Checks that every block is marked, then writes the manifest into the root group's attributes
  (the last write of an export)."""
  markers = L.finished_blocks(kv)
  missing = [b for b in range(layout.num_blocks) if b not in markers]
  if missing:
    raise UserError(f"store {url!r}: blocks {missing[:5]} are not written; rerun the export to finish them")
  arrays = {name: L.combine_hashes([markers[b]["sha256"][name] for b in range(layout.num_blocks)])
            for name in layout.arrays()}
  manifest = M.Manifest(layout, identity.checkpoint_sha256, identity.fgrams_sha256, step, vocab_size, arrays)
  L.write_manifest_attributes(kv, manifest.to_json())
  return manifest
