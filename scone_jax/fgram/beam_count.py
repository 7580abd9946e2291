"""Corpus-scale f-gram counting as an Apache Beam pipeline (same result as scone_jax.fgram.count).

Distributed and numpy-batched: no element is ever one n-gram, no side input grows with the
survivors, no step gathers the vocabulary on one worker.

n-grams as data (scone_jax.fgram.beam_kernels). A set of distinct n-grams of one length is a
Grams: packed uint64 keys (the ids side by side, exact) when n ids fit 64 bits, else tuple hashes
with the token rows, in both cases with int64 counts. A key only places an n-gram: its bucket is
mix(key) % B. Hashed n-grams are told apart on their tokens (a collision takes an exact path), so
a hash collision can never change a count or the output.

The graph, for K = max_n, B buckets, over the ArrayRecord train shards:
  pass n = 2..K:
    CountShard(n)  per shard: re-read it, mark the positions whose (n-1)-gram is one of the
                   shard's survivors of pass n-1; candidates are positions whose (n-1)-prefix and
                   (n-1)-suffix both survived; count them and emit one (bucket, Grams) element per
                   bucket. Packed windows: membership by member_keys (a numpy hash table), counting
                   by one plain sort, as the local counter's last pass; hashed ones are grouped by
                   their hashes and verified id by id (group_rows).
    MergeBucket(n) GroupByKey(bucket): sum the shards' counts exactly; survivors = count >= c_min.
                   The join: every shard's candidates meet their bucket's totals here, and each
                   shard gets back, keyed by shard id, exactly its own n-grams that survived.
    GroupByKey(shard id) -> the input of CountShard(n + 1) (a shard's survivors, never anyone's).
  ranking (docs/METHODS.md 1.1: count desc, n asc, ids asc; top S), per part = (n, bucket):
    Histogram      a small combine of (count, n) -> number of survivors (one message per part);
                   its cumulative sum gives every (count, n) group's first rank. The cutoff is
                   the last group that starts below S: groups before it are kept whole, its own
                   ties are cut exactly by rank below. Each part gets that one integer.
    Select         each part keeps its members of the kept groups, sorted by (group, tokens).
    Splitters      every `sample_every`-th member of each part (RANGE_ROWS by default); per n
                   they cut the (group, tokens) order into ranges of about sample_every members.
    Route          each part sends its members to their ranges (n, r), one message per range, and
                   one message with its (range, group) sizes; a small combine turns those into
                   the global rank of each group's first member in each range.
    RankRange      a range sorts its members and knows their exact global ranks (>= S dropped).
    WriteFile      GroupByKey(file k = rank // rows_per_file) writes fgrams file k (vocab.write_rows,
                   vocab.file_names: the local runner's layout and bytes); then one summary.json.
Only Create, ParDo, Flatten and GroupByKey: every join is a GroupByKey of tagged values (no side
inputs, which the Dask runner evaluates wrongly, and no side input grows with the survivors);
the messages that reach one worker (histogram, range sizes) are bounded by the number of
distinct counts and of ranges, not by the survivors. Everything ends in one leaf, WriteSummary
(the Dask runner computes only the last transform).

Runners (scone_jax.fgram.beam_runner). Pipeline options come as one string (--beam_args); the
default is the FnApiRunner with worker processes (offline: it never downloads a runner binary).
`--runner=DaskRunner` is Beam's DaskRunner with stages bounded to --dask_npartitions partitions
(default: one per worker thread of the cluster); Dataflow, Flink and Spark are the production
runners. On a remote runner the shard paths must be readable by the workers and --temp_location
must be a shared location: the ranked files are written there and copied into FG.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid

import numpy as np

from scone_jax.data import shards
from scone_jax.errors import UserError
from scone_jax.fgram import vocab as vocab_lib
from scone_jax.fgram.beam_kernels import (
  Grams,
  count_shard,
  id_bits,
  lex_keys,
  members,
  merge_grams,
  shard_tokens,
  sorted_by_key,
  split_by_bucket,
)
from scone_jax.fgram.beam_runner import parse_beam_args, quiet_worker_logs, run, with_dask_partitions
from scone_jax.fgram.count import check_vocab_size, counted_meta, validate_params
from scone_jax.fgram.vocab import FgramVocab
from scone_jax.files import atomic_directory

SUMMARY = "summary.json"
MEMORY_TRACE_ENV = "SCONE_BEAM_MEMORY_TRACE"  # a directory: the workers log each step call's peak heap there
RANGE_ROWS = 1 << 20  # members per sorting range, about (the sampling rate of the splitters)
GROUP_BASE = 1 << 56  # counts stay below it (a count is at most the tokens counted)


# ---- pipeline steps ------------------------------------------------------------------------------

class _Config:
  def __init__(self, paths, vocab_size, special_ids, max_n, size, min_count, num_buckets, sample_every,
               rows_per_file, result_dir):
    self.paths, self.vocab_size, self.special_ids = list(paths), vocab_size, tuple(sorted(special_ids))
    self.max_n, self.size, self.min_count, self.num_buckets = max_n, size, min_count, num_buckets
    self.sample_every, self.rows_per_file, self.result_dir = sample_every, rows_per_file, result_dir
    self.bits = id_bits(vocab_size)


def _count_step(cfg: _Config, n: int):
  """CountShard(n): one shard's candidate n-grams, one (bucket, (shard, Grams)) per bucket."""
  def step(element):
    if n == 2:
      shard, survivors = element, None
    else:
      shard, pieces = element
      survivors = sorted_by_key(Grams.concat(list(pieces), n - 1, cfg.bits))
    grams = count_shard(shard_tokens(cfg.paths[shard], cfg.vocab_size, cfg.special_ids), n, survivors,
                        cfg.vocab_size)
    for bucket, part in split_by_bucket(grams, cfg.num_buckets):
      yield bucket, (shard, part)
  return step


def _merge_step(cfg: _Config, n: int):
  """MergeBucket(n): exact totals of one bucket; its survivors go to the ranking (tokens and
  totals) and, keyed by shard, back to the shards that hold them (keys only, for pass n + 1)."""
  def step(element):
    bucket, pieces = element
    pieces = list(pieces)
    merged = merge_grams([p for _, p in pieces], n, cfg.bits)
    survivors = merged.take(merged.counts >= cfg.min_count)
    if len(survivors) == 0:
      return
    yield "rank", ((n, bucket), (survivors.rows(cfg.bits), survivors.counts))
    if n < cfg.max_n:
      for shard, part in pieces:
        keep = members(part, survivors)
        if keep.any():
          kept = part.take(keep)
          kept.counts = None
          yield "next", (shard, kept)
  return step


def group_ids(counts: np.ndarray, n: int, max_n: int) -> np.ndarray:
  """int64 >= 0 per (count, n) whose ascending order is the rank order of the groups (count desc, n asc)."""
  return (GROUP_BASE - np.asarray(counts, dtype=np.int64)) * (max_n + 1) + n


def _tagged(items, kind):
  return [v for k, v in items if k == kind]


def _histogram(cfg: _Config):
  def step(part):
    (n, _), (_, counts) = part
    values, num = np.unique(counts, return_counts=True)
    return 0, (group_ids(values, n, cfg.max_n), num.astype(np.int64))
  return step


def _cutoff(cfg: _Config):
  """From the histogram: the groups that start below rank S, the last of them (members of later
  groups are not selected), and one message per consumer (broadcasts of a few integers)."""
  def step(element):
    _, pieces = element
    pieces = list(pieces)
    ids = np.concatenate([p[0] for p in pieces])
    nums = np.concatenate([p[1] for p in pieces])
    unique, inverse = np.unique(ids, return_inverse=True)
    sizes = np.zeros(len(unique), np.int64)
    np.add.at(sizes, inverse, nums)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    keep = starts < cfg.size
    last = int(unique[keep][-1])
    num_fgrams = int(min(cfg.size, sizes.sum()))
    for n in range(2, cfg.max_n + 1):
      for b in range(cfg.num_buckets):
        yield "part", ((n, b), ("last", last))
    yield "groups", (0, ("groups", (unique[keep], starts[keep])))
    for k in range(len(vocab_lib.file_names(num_fgrams, cfg.rows_per_file))):
      yield "file", (k, ("num_fgrams", num_fgrams))
    yield "summary", (0, ("num_fgrams", num_fgrams))
  return step


def _select(cfg: _Config):
  """Per part: its members in selected groups, sorted by (group, tokens), with their group id."""
  def step(element):
    (n, bucket), items = element
    data, last = _tagged(items, "data"), _tagged(items, "last")
    if not data or not last:
      return
    tokens, counts = data[0]
    g = group_ids(counts, n, cfg.max_n)
    keep = g <= last[0]
    if not keep.any():
      return
    g, tokens, counts = g[keep], tokens[keep], counts[keep]
    order = np.argsort(lex_keys(tokens, g), kind="stable")
    yield (n, bucket), (g[order], tokens[order], counts[order])
  return step


def _samples(cfg: _Config):
  """Every sample_every-th member of a part, in (group, tokens) order."""
  def step(part):
    (n, _), (g, tokens, _) = part
    pick = np.arange(cfg.sample_every - 1, len(g), cfg.sample_every)
    if len(pick):
      yield 0, (n, g[pick], tokens[pick])
  return step


def _splitters(cfg: _Config):
  """Per n: the sorted lex_keys(tokens, group) of the samples, sent to every part of length n."""
  def step(element):
    _, pieces = element
    by_n = {}
    for n, g, tokens in pieces:
      by_n.setdefault(n, []).append(lex_keys(tokens, g))
    for n, keys in by_n.items():
      keys = np.sort(np.concatenate(keys))
      for b in range(cfg.num_buckets):
        yield (n, b), ("splitters", keys)
  return step


def _runs(*columns) -> list[tuple[int, int]]:
  """(lo, hi) of the runs of equal rows across the given equal-length columns."""
  size = len(columns[0])
  change = np.zeros(max(0, size - 1), bool)
  for c in columns:
    change |= c[1:] != c[:-1]
  cut = np.flatnonzero(change) + 1
  return list(zip(np.concatenate([[0], cut]).tolist(), np.append(cut, size).tolist()))


def _route(element):
  """Per part of length n: its members cut by the splitters of length n into ranges (n, r), r =
  the number of splitters at or below the member in (group, tokens) order. One rows message per
  range it touches and one message with its (range, group) sizes."""
  (n, _), items = element
  parts, spl = _tagged(items, "data"), _tagged(items, "splitters")
  if not parts:
    return
  g, tokens, counts = parts[0]
  ranges = np.searchsorted(spl[0], lex_keys(tokens, g), side="right") if spl else np.zeros(len(g), np.int64)
  for lo, hi in _runs(ranges):
    yield "rows", ((n, int(ranges[lo])), ("rows", (g[lo:hi], tokens[lo:hi], counts[lo:hi])))
  runs = _runs(ranges, g)
  heads = np.array([lo for lo, _ in runs], np.int64)
  yield "size", (0, ("size", (n, ranges[heads], g[heads], np.array([hi - lo for lo, hi in runs], np.int64))))


def _range_starts(element):
  """Per range (n, r) and group g in it: the global rank of the group's first member there, its
  group's first rank plus the group's members in earlier ranges."""
  _, items = element
  ids, group_starts = _tagged(items, "groups")[0]
  sizes = _tagged(items, "size")
  if not sizes:
    return
  n = np.concatenate([np.full(len(p[1]), p[0], np.int64) for p in sizes])
  r, g, size = (np.concatenate([p[i] for p in sizes]).astype(np.int64) for i in (1, 2, 3))
  order = np.lexsort((r, g))  # by group, then range (a group has one n)
  n, r, g, size = n[order], r[order], g[order], size[order]
  runs = _runs(g, r)
  heads = np.array([lo for lo, _ in runs], np.int64)
  n, r, g = n[heads], r[heads], g[heads]
  size = np.add.reduceat(size, heads)
  before = np.cumsum(size) - size  # members of earlier (group, range) rows
  group_head = np.concatenate([[0], np.flatnonzero(g[1:] != g[:-1]) + 1])
  first_of_group = np.repeat(group_head, np.diff(np.append(group_head, len(g))))
  start = group_starts[np.searchsorted(ids, g)] + before - before[first_of_group]
  order = np.lexsort((g, r, n))
  n, r, g, start = n[order], r[order], g[order], start[order]
  for lo, hi in _runs(n, r):
    yield (int(n[lo]), int(r[lo])), ("start", (g[lo:hi], start[lo:hi]))


def _rank_range(cfg: _Config):
  """Sorts one range by (group, tokens), gives its members their global ranks, keeps ranks < S,
  splits them by file."""
  def step(element):
    _, items = element
    rows, starts = _tagged(items, "rows"), _tagged(items, "start")
    if not rows:
      return
    g = np.concatenate([p[0] for p in rows])
    tokens = np.concatenate([p[1] for p in rows])
    counts = np.concatenate([p[2] for p in rows])
    order = np.argsort(lex_keys(tokens, g), kind="stable")
    g, tokens, counts = g[order], tokens[order], counts[order]
    start_ids, start_ranks = starts[0]
    head = np.concatenate([[0], np.flatnonzero(g[1:] != g[:-1]) + 1])
    within = np.arange(len(g)) - np.repeat(head, np.diff(np.append(head, len(g))))
    ranks = start_ranks[np.searchsorted(start_ids, g)] + within
    keep = ranks < cfg.size
    tokens, counts, ranks = tokens[keep], counts[keep], ranks[keep]
    files = ranks // cfg.rows_per_file
    # ranks are contiguous within a group, not across: one piece per run of consecutive ranks and file
    cut = np.flatnonzero((np.diff(ranks) != 1) | (np.diff(files) != 0)) + 1
    for lo, hi in zip(np.concatenate([[0], cut]), np.append(cut, len(ranks))):
      if hi > lo:
        yield int(files[lo]), ("rows", (int(ranks[lo]), tokens[lo:hi], counts[lo:hi]))
  return step


def _write_file(cfg: _Config):
  def step(element):
    from apache_beam.io.filesystems import FileSystems
    k, items = element
    pieces = sorted(_tagged(items, "rows"), key=lambda p: p[0])
    num_fgrams = _tagged(items, "num_fgrams")[0]
    names = vocab_lib.file_names(num_fgrams, cfg.rows_per_file)
    lo = k * cfg.rows_per_file
    hi = min(num_fgrams, lo + cfg.rows_per_file)
    at = lo
    for first, _, counts in pieces:
      assert first == at, f"file {k}: ranks not contiguous ({first} after {at})"
      at += len(counts)
    assert at == hi, f"file {k}: {at - lo} rows, expected {hi - lo}"
    lengths = np.concatenate([np.full(len(p[2]), p[1].shape[1], np.int64) for p in pieces])
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.concatenate([p[1].reshape(-1) for p in pieces])
    with FileSystems.create(FileSystems.join(cfg.result_dir, names[k])) as f:
      vocab_lib.write_rows(f, flat, offsets, np.concatenate([p[2] for p in pieces]))
    return 0, ("file", names[k])
  return step


def _write_summary(cfg: _Config):
  def step(element):
    from apache_beam.io.filesystems import FileSystems
    _, items = element
    num = _tagged(items, "num_fgrams")
    summary = {"tokens_counted": int(sum(_tagged(items, "tokens"))), "num_fgrams": num[0] if num else 0,
               "files": sorted(_tagged(items, "file"))}
    with FileSystems.create(FileSystems.join(cfg.result_dir, SUMMARY)) as f:
      f.write(json.dumps(summary).encode())
  return step


def _shard_tokens_counted(cfg: _Config):
  def step(shard):
    return 0, ("tokens", sum(len(r) // 4 for r in shards.read_records(cfg.paths[shard])))
  return step


def _measured(label: str, fn):
  """fn, logging per call (when MEMORY_TRACE_ENV names a directory in the worker's environment)
  the peak of the heap it allocated (tracemalloc: Python objects and numpy arrays), a line
  "label bytes" in DIR/<pid>.txt. The pipeline's own working set, apart from the runner's buffers."""
  def call(*a):
    directory = os.environ.get(MEMORY_TRACE_ENV)
    if not directory:
      return fn(*a)
    import tracemalloc
    if not tracemalloc.is_tracing():
      tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    out = fn(*a)
    out = list(out) if out is not None and not isinstance(out, tuple) else out
    peak = tracemalloc.get_traced_memory()[1] - base
    with open(os.path.join(directory, f"{os.getpid()}.txt"), "a") as f:
      f.write(f"{label} {peak}\n")
    return out
  return call


def build_pipeline(pipeline, cfg: _Config) -> None:
  """Adds the counting graph to `pipeline`; running it writes the ranked files and SUMMARY to
  cfg.result_dir. Only Create, ParDo, Flatten and GroupByKey: every join is a GroupByKey of
  tagged values (no side inputs: runners such as Dask evaluate those poorly), and everything
  ends in one leaf (WriteSummary)."""
  import apache_beam as beam

  def pick(pcoll, label, kind):
    return (pcoll
            | f"Pick{label}" >> beam.Filter(lambda tagged, kind=kind: tagged[0] == kind)
            | f"Untag{label}" >> beam.Map(lambda tagged: tagged[1]))

  def tag(pcoll, label, kind):
    return pcoll | f"Tag{label}" >> beam.Map(lambda kv, kind=kind: (kv[0], (kind, kv[1])))

  shards = (pipeline
            | "ShardIds" >> beam.Create(list(range(len(cfg.paths))))
            | "SpreadShards" >> beam.Reshuffle())
  tokens = shards | "TokensCounted" >> beam.Map(_shard_tokens_counted(cfg))
  parts = []
  current = shards
  for n in range(2, cfg.max_n + 1):
    merged = (current
              | f"CountShard{n}" >> beam.FlatMap(_measured(f"CountShard{n}", _count_step(cfg, n)))
              | f"GroupBucket{n}" >> beam.GroupByKey()
              | f"MergeBucket{n}" >> beam.FlatMap(_measured(f"MergeBucket{n}", _merge_step(cfg, n))))
    parts.append(pick(merged, f"Survivors{n}", "rank"))
    if n < cfg.max_n:
      current = pick(merged, f"ToShards{n}", "next") | f"GroupShard{n}" >> beam.GroupByKey()
  survivors = parts | "AllPasses" >> beam.Flatten()
  cut = (survivors
         | "Histogram" >> beam.Map(_histogram(cfg))
         | "GroupHistogram" >> beam.GroupByKey()
         | "Cutoff" >> beam.FlatMap(_measured("Cutoff", _cutoff(cfg))))
  selected = ((tag(survivors, "Parts", "data"), pick(cut, "CutParts", "part"))
              | "PartsAndCut" >> beam.Flatten()
              | "GroupPart" >> beam.GroupByKey()
              | "Select" >> beam.FlatMap(_measured("Select", _select(cfg))))
  splitters = (selected
               | "Sample" >> beam.FlatMap(_samples(cfg))
               | "GroupSamples" >> beam.GroupByKey()
               | "Splitters" >> beam.FlatMap(_splitters(cfg)))
  routed = ((tag(selected, "Selected", "data"), splitters)
            | "SelectedAndSplitters" >> beam.Flatten()
            | "GroupSelected" >> beam.GroupByKey()
            | "Route" >> beam.FlatMap(_measured("Route", _route)))
  starts = ((pick(routed, "Sizes", "size"), pick(cut, "CutGroups", "groups"))
            | "SizesAndGroups" >> beam.Flatten()
            | "GroupSizes" >> beam.GroupByKey()
            | "RangeStarts" >> beam.FlatMap(_measured("RangeStarts", _range_starts)))
  files = ((pick(routed, "Rows", "rows"), starts)
           | "RowsAndStarts" >> beam.Flatten()
           | "GroupRange" >> beam.GroupByKey()
           | "RankRange" >> beam.FlatMap(_measured("RankRange", _rank_range(cfg))))
  written = ((files, pick(cut, "CutFiles", "file"))
             | "FilesAndCounts" >> beam.Flatten()
             | "GroupFile" >> beam.GroupByKey()
             | "WriteFile" >> beam.Map(_measured("WriteFile", _write_file(cfg))))
  _ = ((written, tokens, pick(cut, "CutSummary", "summary"))
       | "SummaryParts" >> beam.Flatten()
       | "GroupSummary" >> beam.GroupByKey()
       | "WriteSummary" >> beam.Map(_write_summary(cfg)))


def default_num_buckets(num_shards: int) -> int:
  return max(8, 4 * num_shards)


def run_count(shard_paths: list[str], result_dir: str, *, vocab_size: int, special_ids=(), max_n: int, size: int,
              min_count: int = 5, beam_args=None, num_buckets: int | None = None, sample_every: int | None = None,
              rows_per_file: int = vocab_lib.ROWS_PER_FILE) -> dict:
  """Runs the pipeline; result_dir (local or a Beam FileSystems path) gets the ranked parquet files
  (vocab.file_names) and SUMMARY; returns the summary {tokens_counted, num_fgrams, files}."""
  import apache_beam as beam
  from apache_beam.io.filesystems import FileSystems
  from apache_beam.options.pipeline_options import PipelineOptions
  validate_params(max_n, size, min_count)
  check_vocab_size(vocab_size)
  if not shard_paths:
    raise UserError("no train shards to count")
  cfg = _Config(sorted(shard_paths), vocab_size, special_ids, max_n, size, min_count,
                num_buckets or default_num_buckets(len(shard_paths)),
                sample_every or RANGE_ROWS, rows_per_file, result_dir)
  args = with_dask_partitions(parse_beam_args(beam_args), len(cfg.paths))
  quiet_worker_logs()
  pipeline = beam.Pipeline(options=PipelineOptions(args))
  build_pipeline(pipeline, cfg)
  run(pipeline.run())
  with FileSystems.open(FileSystems.join(result_dir, SUMMARY)) as f:
    return json.loads(f.read().decode())


def count_fgrams_beam(shard_paths: list[str], *, vocab_size: int, special_ids=(), max_n: int, size: int,
                      min_count: int = 5, beam_args=None, tmp_dir: str | None = None,
                      num_buckets: int | None = None, sample_every: int | None = None,
                      rows_per_file: int = vocab_lib.ROWS_PER_FILE) -> FgramVocab:
  """Runs the pipeline and returns the same FgramVocab as scone_jax.fgram.count.count_fgrams on the
  same documents (vocab_size only goes into its meta)."""
  from apache_beam.io.filesystems import FileSystems
  with beam_result_dir(beam_args, tmp_dir) as result_dir:
    summary = run_count(shard_paths, result_dir, vocab_size=vocab_size, special_ids=special_ids, max_n=max_n,
                        size=size, min_count=min_count, beam_args=beam_args, num_buckets=num_buckets,
                        sample_every=sample_every, rows_per_file=rows_per_file)
    flats, lengths, counts = [], [], []
    for name in summary["files"]:
      with FileSystems.open(FileSystems.join(result_dir, name)) as f:
        flat, offsets, count = vocab_lib.read_rows(f, where=name)
      flats.append(flat)
      lengths.append(np.diff(offsets))
      counts.append(count)
  meta = counted_meta(max_n=max_n, size=size, min_count=min_count, vocab_size=vocab_size,
                      tokens_counted=summary["tokens_counted"], num_fgrams=summary["num_fgrams"])
  if not counts:
    return FgramVocab(np.empty(0, np.int32), np.zeros(1, np.int64), np.empty(0, np.int64), meta)
  offsets = np.zeros(sum(len(c) for c in counts) + 1, np.int64)
  np.cumsum(np.concatenate(lengths), out=offsets[1:])
  return FgramVocab(np.concatenate(flats), offsets, np.concatenate(counts), meta)


class beam_result_dir:
  """A fresh result directory: under --temp_location when the options name one (remote runners),
  else a local temporary directory under tmp_dir; removed at the end."""

  def __init__(self, beam_args, tmp_dir):
    self.beam_args, self.tmp_dir, self.path, self.remote = beam_args, tmp_dir, None, False

  def __enter__(self) -> str:
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions
    remote = PipelineOptions(parse_beam_args(self.beam_args)).view_as(GoogleCloudOptions).temp_location
    if remote:
      self.path, self.remote = FileSystems.join(remote, f"fgrams-{uuid.uuid4().hex}"), True
      FileSystems.mkdirs(self.path)
    else:
      self.path = tempfile.mkdtemp(prefix=".fgram-beam-", dir=self.tmp_dir)
    return self.path

  def __exit__(self, *exc):
    from apache_beam.io.filesystems import FileSystems
    if self.remote:
      if FileSystems.exists(self.path):
        FileSystems.delete([self.path])
    else:
      shutil.rmtree(self.path, ignore_errors=True)
    return False


def install_files(result_dir: str, summary: dict, out_dir: str, meta) -> None:
  """Copies the ranked files of a run into FG (atomically) and writes FG/meta.json."""
  from apache_beam.io.filesystems import FileSystems
  with atomic_directory(out_dir) as tmp:
    for name in summary["files"]:
      with FileSystems.open(FileSystems.join(result_dir, name)) as src, open(os.path.join(tmp, name), "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 22)
    vocab_lib.write_meta(tmp, meta, summary["files"], summary["num_fgrams"])
