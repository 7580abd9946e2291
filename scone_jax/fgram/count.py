"""Local f-gram counting: the paper's K-1 passes with apriori pruning (docs/METHODS.md 1.1), in numpy.

How an n-gram becomes an integer key (exact, no hashing). Pass n assigns every surviving n-gram
(count >= c_min) an id: its index in the sorted array of surviving keys. An n-gram's key is
    key_n = id_{n-1}(its (n-1)-prefix) * |V| + last token,       id_1(token) = token,
so a key is below (#survivors of pass n-1) * |V| <= tokens * |V|, far inside uint64 for any real
corpus, whatever K is. Sorted key order is lexicographic token order (ids are assigned in sorted
key order, induction on n), which is what the ranking tie-break needs, and a key decodes back to
its tokens by walking the survivor arrays down to pass 2.

Bounded memory. The corpus is read once and cached in chunks of about `chunk_tokens` tokens
(documents back to back, separated by -1; special ids also become -1 so they break n-grams). Per
pass and chunk: the previous pass's per-position survivor ids give the candidate positions (both
the (n-1)-prefix and the (n-1)-suffix survive), their keys are sorted and run-length counted, and
the sorted (key, count) run is spilled to .npy; the runs are then k-way merged block by block and
filtered by c_min into that pass's survivor file. The merge reads at most MERGE_FAN_IN runs at a
time (a memory-mapped run holds two file descriptors, keys and counts): more runs are first merged MERGE_FAN_IN at
a time into intermediate runs, so any number of chunks runs under a small `ulimit -n`. Each chunk also spills, per position, the index
of its key in its own run, so the next pass maps positions to global survivor ids with a
searchsorted of the chunk's sorted unique keys (sorted queries: cheap) instead of one per position.

No size limit: positions and run indices are int32 only while they fit (index_dtype), int64
beyond (a document longer than 2^31 tokens lands in one chunk); counts are int64; token ids must
fit int32 (the shard format) and keys must fit uint64, else a one-line UserError.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from typing import Iterable, Iterator

import numpy as np

from scone_jax.errors import UserError
from scone_jax.fgram.vocab import FgramMeta, FgramVocab
from scone_jax.files import deferred_interrupts
from scone_jax.progress import Bars, progress_bars

DEFAULT_CHUNK_TOKENS = 1 << 23
SEPARATOR = -1  # document boundary and special ids in the cached token chunks
MERGE_FAN_IN = 16  # runs memory-mapped at once while merging (two files, so two fds, each)
INT32_INDEX_LIMIT = (1 << 31) - 1  # largest index int32 holds; a module constant so tests can lower it
MAX_VOCAB_SIZE = (1 << 31) - 1  # token ids are int32


def index_dtype(length: int):
  """int32 for indices into arrays of `length` entries while they fit, int64 beyond."""
  return np.int32 if length <= INT32_INDEX_LIMIT else np.int64


def check_vocab_size(vocab_size: int) -> None:
  if vocab_size > MAX_VOCAB_SIZE:
    raise UserError(f"vocab_size {vocab_size} is above {MAX_VOCAB_SIZE}: token ids are int32; use a smaller vocabulary")


def document_tokens(doc, doc_index: int, vocab_size: int, source: str) -> np.ndarray:
  """int32 [len + 1]: one document's ids followed by SEPARATOR; a UserError for ids outside [0, vocab_size)."""
  doc = np.asarray(doc).reshape(-1)
  if len(doc) and (doc.min() < 0 or doc.max() >= vocab_size):
    bad = int(doc.min()) if doc.min() < 0 else int(doc.max())
    raise UserError(f"{source}: document {doc_index} holds token id {bad}, outside the vocabulary of size {vocab_size}: "
                    "the data does not match its meta.json; re-run `scone-jax prepare`")
  piece = np.empty(len(doc) + 1, dtype=np.int32)
  piece[:-1] = doc
  piece[-1] = SEPARATOR
  return piece


def mask_specials(tokens: np.ndarray, special_ids) -> np.ndarray:
  """Special ids become SEPARATOR (they break n-grams), in place; returns tokens."""
  specials = np.asarray(sorted(set(int(s) for s in special_ids)), dtype=np.int64)
  if len(specials):
    tokens[np.isin(tokens, specials)] = SEPARATOR
  return tokens


def counted_meta(*, max_n: int, size: int, min_count: int, vocab_size: int, tokens_counted: int,
                 num_fgrams: int) -> FgramMeta:
  """The meta of a counter's result: all a counter knows. `fgrams build` adds DATA's
  data_fingerprint (dataclasses.replace) and save() the parquet's sha256."""
  return FgramMeta(max_n=max_n, size=size, min_count=min_count, tokens_counted=tokens_counted,
                   data_fingerprint="", num_fgrams=num_fgrams, vocab_size=vocab_size)


def validate_params(max_n: int, size: int, min_count: int) -> None:
  if max_n < 2:
    raise UserError(f"--max_n {max_n} is below 2: f-grams have 2..K tokens, pass --max_n 2 or more")
  if size < 1:
    raise UserError(f"--size {size} is below 1: pass the number of f-grams to keep")
  if min_count < 1:
    raise UserError(f"--min_count {min_count} is below 1: pass a count cutoff of 1 or more")


def count_fgrams(documents: Iterable[np.ndarray], *, vocab_size: int, special_ids=(), max_n: int,
                 size: int, min_count: int = 5, chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
                 tmp_dir: str | None = None, progress: bool | None = False,
                 merge_block: int | None = None, source: str = "documents") -> FgramVocab:
  """Counts every n-gram (2 <= n <= max_n) inside documents and returns the top `size` of those
  seen at least `min_count` times, ranked by (count desc, n asc, token ids asc), as an
  FgramVocab whose meta is counted_meta(...) (tokens_counted: tokens read, special ids included).

  documents: int token-id arrays in [0, vocab_size); n-grams containing a special id do not exist.
  chunk_tokens: tokens per in-memory chunk (memory is about 60 bytes per chunk token).
  tmp_dir: where chunk caches and spilled runs go (a private subdirectory, removed at the end).
  merge_block: entries per run held in memory while merging (default: chunk_tokens / #chunks).
  progress: bars on stderr (scone_jax.progress: None = when stderr is a TTY).
  source: names the documents in error messages.
  Returns an empty FgramVocab when no n-gram reaches min_count.
  """
  validate_params(max_n, size, min_count)
  check_vocab_size(vocab_size)
  with deferred_interrupts():   # Ctrl-C never leaves a scratch directory behind
    work = tempfile.mkdtemp(prefix=".fgram-count-", dir=tmp_dir)
  try:
    with progress_bars(enabled=progress) as bars:
      chunks, tokens_counted = _cache_chunks(documents, work, vocab_size, special_ids, chunk_tokens, bars, source)
      block = merge_block or max(1 << 16, chunk_tokens // max(1, len(chunks)))
      counter = _PassCounter(work, chunks, vocab_size, min_count, block, bars)
      tops = []  # per pass: (keys, counts) of its top `size` survivors
      for n in range(2, max_n + 1):
        survivors, survivor_counts = counter.run_pass(n, last=(n == max_n))
        top = _top_by_count(survivor_counts, size)
        tops.append((np.asarray(survivors[top]), np.asarray(survivor_counts[top])))
        if len(survivors) == 0:
          break  # apriori: no longer n-gram can reach c_min either
      flat, offsets, counts = _rank(tops, counter.survivor_keys, vocab_size, size)
    meta = counted_meta(max_n=max_n, size=size, min_count=min_count, vocab_size=vocab_size,
                        tokens_counted=tokens_counted, num_fgrams=len(counts))
    return FgramVocab(flat, offsets, counts, meta)
  finally:
    with deferred_interrupts():
      shutil.rmtree(work, ignore_errors=True)


@dataclasses.dataclass
class _Chunk:
  tokens_path: str     # int32 [L]: documents, each followed by SEPARATOR
  run_index_path: str  # int32 (int64 past 2^31) [L]: per position, index of its key in this chunk's last run, or -1
  run_keys_path: str   # uint64: the chunk's sorted unique keys of the last pass
  run_counts_path: str  # int64: their counts
  num_tokens: int


def _cache_chunks(documents, work, vocab_size, special_ids, chunk_tokens, bars: Bars, source):
  """Reads the documents once into chunk files; returns (chunks, tokens read)."""
  chunks: list[_Chunk] = []
  pending: list[np.ndarray] = []
  pending_len = 0
  tokens_counted = 0
  task = bars.task("read documents")

  def flush():
    nonlocal pending, pending_len
    if not pending:
      return
    tokens = mask_specials(np.concatenate(pending), special_ids)
    i = len(chunks)
    path = lambda kind: os.path.join(work, f"chunk{i:06d}.{kind}.npy")
    np.save(path("tokens"), tokens)
    chunks.append(_Chunk(path("tokens"), path("run_index"), path("run_keys"), path("run_counts"), len(tokens)))
    pending, pending_len = [], 0

  for doc_index, doc in enumerate(documents):
    piece = document_tokens(doc, doc_index, vocab_size, source)
    tokens_counted += len(piece) - 1
    pending.append(piece)
    pending_len += len(piece)
    if pending_len >= chunk_tokens:
      flush()
    task.advance(len(piece) - 1)
  flush()
  task.finish()
  return chunks, tokens_counted


class _PassCounter:
  """Runs pass n over all chunks and keeps every pass's survivor keys (memory-mapped)."""

  def __init__(self, work, chunks, vocab_size, min_count, merge_block, bars: Bars):
    self.work, self.chunks, self.vocab_size = work, chunks, vocab_size
    self.min_count, self.merge_block, self.bars = min_count, merge_block, bars
    self.survivor_keys: dict[int, np.ndarray] = {}  # n -> sorted uint64 keys of surviving n-grams

  def run_pass(self, n: int, last: bool) -> tuple[np.ndarray, np.ndarray]:
    """Counts the candidate n-grams; returns (sorted keys, counts) of those reaching c_min."""
    prefix_ids = self.vocab_size if n == 2 else len(self.survivor_keys[n - 1])
    if prefix_ids * self.vocab_size >= 2**64:
      raise UserError(f"pass n={n}: {prefix_ids} surviving prefixes x vocabulary {self.vocab_size} overflow 64-bit "
                      "keys; raise --min_count")
    key_bits = (prefix_ids * self.vocab_size).bit_length()
    task = self.bars.task(f"pass n={n}", total=sum(c.num_tokens for c in self.chunks))
    runs = []
    for chunk in self.chunks:
      tokens = np.load(chunk.tokens_path)
      ids = self._position_ids(chunk, tokens, n)
      # Candidate at i: the (n-1)-grams at i (prefix) and at i+1 (suffix) both survived.
      positions = np.flatnonzero((ids[:-1] >= 0) & (ids[1:] >= 0))
      keys = ids[positions].astype(np.uint64) * np.uint64(self.vocab_size)
      keys += tokens[positions + (n - 1)].astype(np.uint64)
      del ids
      run_keys, run_counts, inverse = sort_and_count(keys, key_bits, want_inverse=not last)
      if not last:
        run_index = np.full(len(tokens), -1, dtype=index_dtype(len(run_keys)))
        run_index[positions] = inverse
        np.save(chunk.run_index_path, run_index)
      np.save(chunk.run_keys_path + f".{n}.npy", run_keys)
      np.save(chunk.run_counts_path + f".{n}.npy", run_counts)
      runs.append((chunk.run_keys_path + f".{n}.npy", chunk.run_counts_path + f".{n}.npy"))
      task.advance(chunk.num_tokens)
    for chunk in self.chunks:  # the previous pass's runs have been mapped to ids: drop them
      for path in (chunk.run_keys_path + f".{n - 1}.npy", chunk.run_counts_path + f".{n - 1}.npy"):
        if os.path.exists(path):
          os.remove(path)
    keys, counts = self._merge(runs, n)
    self.survivor_keys[n] = keys
    return keys, counts

  def _position_ids(self, chunk: _Chunk, tokens: np.ndarray, n: int) -> np.ndarray:
    """int64 [L]: id of the surviving (n-1)-gram starting at each position, -1 where none."""
    if n == 2:
      return tokens.astype(np.int64)  # unigram id = token id; separators are -1
    run_keys = np.load(chunk.run_keys_path + f".{n - 1}.npy")
    survivors = self.survivor_keys[n - 1]
    found = np.searchsorted(survivors, run_keys)
    hit = found < len(survivors)
    hit[hit] = survivors[found[hit]] == run_keys[hit]
    run_to_id = np.where(hit, found, -1).astype(np.int64)
    run_index = np.load(chunk.run_index_path)
    ids = np.full(len(tokens), -1, dtype=np.int64)
    valid = run_index >= 0
    ids[valid] = run_to_id[run_index[valid]]
    return ids

  def _merge(self, runs: list[tuple[str, str]], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Merges the chunk runs of pass n and keeps keys with count >= c_min (memory-mapped result).
    At most MERGE_FAN_IN runs are open at once: more are merged in groups into intermediate runs first."""
    level = 0
    while len(runs) > MERGE_FAN_IN:
      merged = []
      for g in range(0, len(runs), MERGE_FAN_IN):
        group = runs[g:g + MERGE_FAN_IN]
        out = (os.path.join(self.work, f"merge{n}.{level}.{g}.keys.u64"),
               os.path.join(self.work, f"merge{n}.{level}.{g}.counts.i64"))
        _write_run(merge_runs(_open_runs(group), self.merge_block), out)
        if level > 0:  # intermediate runs of the level below are no longer needed
          for path in (p for run in group for p in run):
            os.remove(path)
        merged.append(out)
      runs, level = merged, level + 1
    loaded = _open_runs(runs)
    keys_path = os.path.join(self.work, f"survivors{n}.keys.u64")
    counts_path = os.path.join(self.work, f"survivors{n}.counts.i64")
    total = 0
    with open(keys_path, "wb") as keys_file, open(counts_path, "wb") as counts_file:
      for keys, counts in merge_runs(loaded, self.merge_block):
        keep = counts >= self.min_count
        keys[keep].tofile(keys_file)
        counts[keep].tofile(counts_file)
        total += int(keep.sum())
    del loaded
    if level > 0:
      for path in (p for run in runs for p in run):
        os.remove(path)
    if total == 0:
      return np.empty(0, np.uint64), np.empty(0, np.int64)
    return (np.memmap(keys_path, dtype=np.uint64, mode="r", shape=(total,)),
            np.memmap(counts_path, dtype=np.int64, mode="r", shape=(total,)))


def _open_runs(runs: list[tuple[str, str]]) -> list[tuple[np.ndarray, np.ndarray]]:
  """Memory-maps runs: chunk runs are .npy files, intermediate merged runs raw .u64/.i64 files."""
  def open_one(path, dtype):
    if path.endswith(".npy"):
      return np.load(path, mmap_mode="r")
    size = os.path.getsize(path) // 8
    return np.memmap(path, dtype=dtype, mode="r", shape=(size,)) if size else np.empty(0, dtype)
  return [(open_one(k, np.uint64), open_one(c, np.int64)) for k, c in runs]


def _write_run(blocks: Iterator[tuple[np.ndarray, np.ndarray]], paths: tuple[str, str]) -> None:
  """Writes merged (keys, counts) blocks as one raw run (keys .u64, counts .i64)."""
  with open(paths[0], "wb") as keys_file, open(paths[1], "wb") as counts_file:
    for keys, counts in blocks:
      keys.astype(np.uint64, copy=False).tofile(keys_file)
      counts.astype(np.int64, copy=False).tofile(counts_file)


def sort_and_count(keys: np.ndarray, key_bits: int, want_inverse: bool = True):
  """Sorts uint64 keys and run-length counts them.

  Returns (unique keys ascending uint64 [U], counts int64 [U], inverse [N] or None: int32, or
  int64 past INT32_INDEX_LIMIT entries) where
  unique[inverse[i]] == keys[i]. When key and position fit together in 64 bits the position rides
  in the low bits, so one plain (SIMD) sort replaces a slower argsort.
  """
  if len(keys) == 0:
    return np.empty(0, np.uint64), np.empty(0, np.int64), (np.empty(0, np.int32) if want_inverse else None)
  if not want_inverse:
    sorted_keys, order = np.sort(keys), None
  else:
    position_bits = max(1, (len(keys) - 1).bit_length())
    if key_bits + position_bits <= 64:
      packed = keys << np.uint64(position_bits)
      packed |= np.arange(len(keys), dtype=np.uint64)
      packed.sort()
      sorted_keys = packed >> np.uint64(position_bits)
      order = packed & np.uint64((1 << position_bits) - 1)
      del packed
    else:
      order = np.argsort(keys)
      sorted_keys = keys[order]
  new_run = np.empty(len(sorted_keys), dtype=bool)
  new_run[0] = True
  np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=new_run[1:])
  starts = np.flatnonzero(new_run)
  counts = np.diff(np.append(starts, len(sorted_keys))).astype(np.int64)
  unique = sorted_keys[starts]
  inverse = None
  if order is not None:
    dtype = index_dtype(len(keys))
    inverse = np.empty(len(keys), dtype=dtype)
    inverse[order] = np.cumsum(new_run, dtype=dtype) - 1
  return unique, counts, inverse


def merge_runs(runs: list[tuple[np.ndarray, np.ndarray]], block: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """k-way merge of sorted (unique keys, counts) runs, `block` entries per run in memory at a time.

  Yields (keys, counts) blocks: keys strictly increasing across all blocks, each key once with
  its counts summed over runs. Each round takes, from every run, the keys up to the smallest
  "last key of a block that does not end its run": no run can hold a smaller key later.
  """
  starts = [0] * len(runs)
  while True:
    active = [r for r in range(len(runs)) if starts[r] < len(runs[r][0])]
    if not active:
      return
    bound = None
    for r in active:
      end = starts[r] + block
      if end < len(runs[r][0]):
        last = runs[r][0][end - 1]
        bound = last if bound is None else min(bound, last)
    key_pieces, count_pieces = [], []
    for r in active:
      keys = np.asarray(runs[r][0][starts[r]:starts[r] + block])
      take = len(keys) if bound is None else int(np.searchsorted(keys, bound, side="right"))
      key_pieces.append(keys[:take])
      count_pieces.append(np.asarray(runs[r][1][starts[r]:starts[r] + take]))
      starts[r] += take
    keys, counts = np.concatenate(key_pieces), np.concatenate(count_pieces)
    if len(key_pieces) > 1:
      order = np.argsort(keys, kind="stable")  # timsort: cheap on concatenated sorted pieces
      keys, counts = keys[order], counts[order]
    if len(keys) == 0:
      continue
    new_run = np.empty(len(keys), dtype=bool)
    new_run[0] = True
    np.not_equal(keys[1:], keys[:-1], out=new_run[1:])
    heads = np.flatnonzero(new_run)
    yield keys[heads], np.add.reduceat(counts, heads)


def _top_by_count(counts: np.ndarray, size: int) -> np.ndarray:
  """Indices of the `size` best entries by (count desc, index asc), in index order."""
  if len(counts) <= size:
    return np.arange(len(counts))
  counts = np.asarray(counts)
  threshold = np.partition(counts, len(counts) - size)[len(counts) - size]  # the size-th largest
  above = np.flatnonzero(counts > threshold)
  ties = np.flatnonzero(counts == threshold)[:size - len(above)]
  return np.sort(np.concatenate([above, ties]))


def _rank(tops, survivor_keys, vocab_size, size) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Global ranking of the per-pass top candidates: (count desc, n asc, tokens asc), first `size`.
  Returns (flat int32, offsets int64 [S+1], counts int64 [S]) in rank order."""
  lengths = np.concatenate([np.full(len(k), n, np.int64) for n, (k, _) in enumerate(tops, start=2)])
  keys = np.concatenate([k for k, _ in tops]).astype(np.uint64)
  counts = np.concatenate([c for _, c in tops]).astype(np.int64)
  order = np.lexsort((keys, lengths, -counts))[:size]  # keys sort lexicographically within a length
  lengths, keys, counts = lengths[order], keys[order], counts[order]
  offsets = np.zeros(len(order) + 1, dtype=np.int64)
  np.cumsum(lengths, out=offsets[1:])
  flat = np.empty(int(offsets[-1]), dtype=np.int32)
  for n in np.unique(lengths):
    rows = np.flatnonzero(lengths == n)
    flat[offsets[rows][:, None] + np.arange(n)] = decode_keys(keys[rows], int(n), survivor_keys, vocab_size)
  return flat, offsets, counts


def decode_keys(keys: np.ndarray, n: int, survivor_keys: dict[int, np.ndarray], vocab_size: int) -> np.ndarray:
  """Token ids int32 [len(keys), n] of n-gram keys, walking prefix ids down the survivor arrays."""
  tokens = np.empty((len(keys), n), dtype=np.int32)
  v = np.uint64(vocab_size)
  current = np.asarray(keys, dtype=np.uint64)
  for m in range(n, 1, -1):  # current holds m-gram keys
    tokens[:, m - 1] = current % v
    prefix_ids = current // v
    current = np.asarray(survivor_keys[m - 1][prefix_ids.astype(np.int64)]) if m > 2 else prefix_ids
  tokens[:, 0] = current
  return tokens

