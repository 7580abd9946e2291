"""`fgrams tag --runner beam`: the tags of scone_jax.fgram.tags as a Beam pipeline, distributed the
way counting is (scone_jax.fgram.beam_count): no worker holds the vocabulary or a matcher.

A tag is the length of the longest f-gram ending at an input of [BOS] + document (1 = none).
V_f is closed under suffixes (the matcher refuses a vocabulary that is not), so the lengths that
match at an input are 2..m, contiguous, and the match grows one length per pass, as counting's
candidates do:
  pass n = 2..K:
    Query(n)   per shard (every split): re-read it; the windows of n ids ending at inputs whose
               match so far is n - 1 (for n = 2 every window of two ids in one document) are the
               queries; their distinct keys (beam_kernels.Grams, the counter's keys) go, one
               element per bucket, to their bucket, and the shard's match lengths so far (one
               uint8 per input) to the shard itself.
    Vocab(n)   the f-grams of length n, read file by file from FG, one element per bucket.
    Match(n)   GroupByKey(bucket): every shard's queries meet the bucket's f-grams (an exact
               sorted join, beam_kernels.members); one bit per query goes back to its shard.
    Apply(n)   GroupByKey(shard): re-derive the shard's pass-n queries from its lengths, set the
               matched ones to n, and emit pass n + 1 (or, after K, write the shard's TAGS file).
Per pass the data moved is a shard's distinct queries (8 bytes each; fewer every pass), one bit
per query and one byte per input; the vocabulary moves once per length, bucket by bucket.
The written shards are byte-identical to the local runner's (same records, same writer).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile

import numpy as np

from scone_jax.data import shards
from scone_jax.fgram import vocab as vocab_lib
from scone_jax.fgram.beam_kernels import (
  Grams,
  bucket_parts,
  group_rows,
  id_bits,
  members,
  pack_rows,
  packs,
  sorted_by_key,
  split_by_bucket,
  tuple_hashes,
  window_hashes,
  window_keys,
  windows,
)
from scone_jax.fgram.beam_runner import parse_beam_args, quiet_worker_logs, run, with_dask_partitions
from scone_jax.fgram.count import SEPARATOR, sort_and_count


class _Config:
  def __init__(self, shard_paths, fg_files, vocab_size, bos, max_n, num_buckets, result_dir):
    self.shard_paths, self.fg_files, self.vocab_size, self.bos = list(shard_paths), list(fg_files), vocab_size, bos
    self.max_n, self.num_buckets, self.result_dir = max_n, num_buckets, result_dir
    self.bits = id_bits(max(vocab_size, bos + 1))


def shard_inputs(path: str, bos: int) -> tuple[np.ndarray, np.ndarray]:
  """(stream int32, lengths): per document SEPARATOR, BOS, the document's ids, back to back
  (windows never cross a document), and each document's number of inputs (1 + its length)."""
  records = list(shards.read_records(path))
  lengths = np.fromiter((len(r) // 4 for r in records), np.int64, len(records))
  stream = np.empty(int(lengths.sum()) + 2 * len(records), np.int32)
  at = 0
  for record, n in zip(records, lengths.tolist()):
    stream[at] = SEPARATOR
    stream[at + 1] = bos
    stream[at + 2:at + 2 + n] = np.frombuffer(record, "<i4")
    at += n + 2
  return stream, lengths + 1


def _queries(stream: np.ndarray, lengths: np.ndarray, n: int, bits: int):
  """Pass n's queries of a shard: (end positions [Q], distinct Grams of the windows, inverse [Q]
  from query to its distinct window). lengths: match length so far per stream position."""
  if n == 2:
    ends = np.flatnonzero((stream[1:] != SEPARATOR) & (stream[:-1] != SEPARATOR)) + 1
  else:
    ends = np.flatnonzero(lengths == n - 1)
    ends = ends[ends >= n - 1]
    ends = ends[stream[ends - n + 1] != SEPARATOR]  # the rest of the window is the matched suffix
  starts = ends - n + 1
  if packs(n, bits):
    keys = window_keys(stream, starts, n, bits)
    if n * bits + max(1, len(keys).bit_length()) <= 64:  # key and position in one uint64: one plain sort
      unique, _, inverse = sort_and_count(keys, n * bits)
    else:
      unique, inverse = np.unique(keys, return_inverse=True)
    return ends, Grams(n, unique, None, None), inverse
  hashes = window_hashes(stream, starts, n)
  first, _, inverse = group_rows(hashes, lambda j: stream[starts + j], n)
  return ends, Grams(n, hashes[first], windows(stream, starts[first], n), None), inverse


def _emit_queries(cfg: _Config, shard: int, stream, lengths, n: int):
  _, grams, _ = _queries(stream, lengths, n, cfg.bits)
  for bucket, index in bucket_parts(grams.keys, cfg.num_buckets):
    yield "query", (bucket, ("query", (shard, grams.take(index))))
  yield "state", (shard, ("state", lengths))


def _first_step(cfg: _Config):
  def step(shard):
    stream, _ = shard_inputs(cfg.shard_paths[shard], cfg.bos)
    yield from _emit_queries(cfg, shard, stream, np.ones(len(stream), np.uint8), 2)
  return step


def _vocab_step(cfg: _Config, n: int):
  """The f-grams of length n of one FG file, one Grams per bucket (hashed ones sorted by key)."""
  def step(name):
    from apache_beam.io.filesystems import FileSystems
    with FileSystems.open(name) as f:
      flat, offsets, _ = vocab_lib.read_rows(f, where=name)
    rows = np.flatnonzero(np.diff(offsets) == n)
    if len(rows) == 0:
      return
    tokens = windows(flat, offsets[rows], n)
    keys = pack_rows(tokens, cfg.bits) if packs(n, cfg.bits) else tuple_hashes(tokens)
    grams = Grams(n, keys, None if packs(n, cfg.bits) else tokens, None)
    for bucket, part in split_by_bucket(grams, cfg.num_buckets):
      yield bucket, ("vocab", part)
  return step


def _match_step(cfg: _Config, n: int):
  def step(element):
    _, items = element
    vocab = [v for k, v in items if k == "vocab"]
    known = sorted_by_key(Grams.concat(vocab, n, cfg.bits)) if vocab else Grams.empty(n, cfg.bits)
    for kind, value in items:
      if kind == "query":
        shard, queries = value
        yield shard, ("found", (element[0], np.packbits(members(queries, known))))
  return step


def _apply_step(cfg: _Config, n: int):
  def step(element):
    shard, items = element
    lengths = next(v for k, v in items if k == "state").copy()
    found = dict(v for k, v in items if k == "found")  # bucket -> one bit per query of the bucket
    stream, doc_lengths = shard_inputs(cfg.shard_paths[shard], cfg.bos)
    ends, grams, inverse = _queries(stream, lengths, n, cfg.bits)
    matched = np.zeros(len(grams), bool)
    for bucket, index in bucket_parts(grams.keys, cfg.num_buckets):
      if bucket in found:
        matched[index] = np.unpackbits(found[bucket], count=len(index)).astype(bool)
    lengths[ends[matched[inverse]]] = n
    if n < cfg.max_n:
      yield from _emit_queries(cfg, shard, stream, lengths, n + 1)
    else:
      yield "written", _write_tags(cfg, shard, lengths, doc_lengths)
  return step


def _write_tags(cfg: _Config, shard: int, lengths: np.ndarray, doc_lengths: np.ndarray):
  """Writes the shard's TAGS file (record i: uint8 per input of document i) and returns
  (name, sha256, documents)."""
  from apache_beam.io.filesystems import FileSystems
  name = os.path.basename(cfg.shard_paths[shard])
  keep = np.ones(len(lengths), bool)
  keep[np.cumsum(doc_lengths + 1) - doc_lengths - 1] = False  # the SEPARATOR before each document
  tags = lengths[keep]
  cuts = np.cumsum(doc_lengths)[:-1]
  local = tempfile.mkdtemp(prefix=".tags-shard-")
  try:
    path = os.path.join(local, name)
    writer = shards.ArrayRecordWriter(path, shards.WRITER_OPTIONS)
    try:
      for doc in np.split(tags, cuts) if len(doc_lengths) else []:
        writer.write(doc.tobytes())
    finally:
      writer.close()
    digest = hashlib.sha256()
    with open(path, "rb") as src, FileSystems.create(FileSystems.join(cfg.result_dir, name)) as dst:
      while block := src.read(1 << 22):
        digest.update(block)
        dst.write(block)
    return name, digest.hexdigest(), len(doc_lengths)
  finally:
    shutil.rmtree(local, ignore_errors=True)


def build_pipeline(pipeline, cfg: _Config):
  """Adds the tagging graph; its result is a PCollection of (name, sha256, documents) per shard."""
  import apache_beam as beam

  def pick(pcoll, label, kind):
    return (pcoll
            | f"Pick{label}" >> beam.Filter(lambda tagged, kind=kind: tagged[0] == kind)
            | f"Untag{label}" >> beam.Map(lambda tagged: tagged[1]))

  files = pipeline | "FgFiles" >> beam.Create(cfg.fg_files)
  current = (pipeline
             | "ShardIds" >> beam.Create(list(range(len(cfg.shard_paths))))
             | "SpreadShards" >> beam.Reshuffle()
             | "Query2" >> beam.FlatMap(_first_step(cfg)))
  for n in range(2, cfg.max_n + 1):
    vocab = files | f"Vocab{n}" >> beam.FlatMap(_vocab_step(cfg, n))
    found = ((pick(current, f"Queries{n}", "query"), vocab)
             | f"QueriesAndVocab{n}" >> beam.Flatten()
             | f"GroupBucket{n}" >> beam.GroupByKey()
             | f"Match{n}" >> beam.FlatMap(_match_step(cfg, n)))
    current = ((found, pick(current, f"State{n}", "state"))
               | f"FoundAndState{n}" >> beam.Flatten()
               | f"GroupShard{n}" >> beam.GroupByKey()
               | f"Apply{n}" >> beam.FlatMap(_apply_step(cfg, n)))
  return pick(current, "Written", "written")


def run_tags(shard_paths: list[str], fg_dir: str, result_dir: str, *, vocab_size: int, bos: int, max_n: int,
             beam_args=None, num_buckets: int | None = None) -> list[tuple[str, str, int]]:
  """Runs the pipeline; result_dir gets one TAGS file per shard. Returns [(name, sha256, documents)]."""
  import apache_beam as beam
  from apache_beam.options.pipeline_options import PipelineOptions
  fg_files = [os.path.join(os.path.abspath(fg_dir), name) for name in vocab_lib.parquet_files(fg_dir)]
  cfg = _Config(shard_paths, fg_files, vocab_size, bos, max_n, num_buckets or max(8, 4 * len(shard_paths)),
                result_dir)
  args = with_dask_partitions(parse_beam_args(beam_args), len(shard_paths))
  quiet_worker_logs()
  pipeline = beam.Pipeline(options=PipelineOptions(args))
  _ = build_pipeline(pipeline, cfg) | "Record" >> beam.Map(_record(result_dir))  # the one leaf (Dask)
  run(pipeline.run())
  from apache_beam.io.filesystems import FileSystems
  out = []
  for path in shard_paths:
    with FileSystems.open(FileSystems.join(result_dir, _record_name(os.path.basename(path)))) as f:
      out.append(tuple(json.loads(f.read().decode())))
  return out


def _record_name(shard_name: str) -> str:
  return f"{shard_name}.written.json"


def _record(result_dir: str):
  def step(element):
    from apache_beam.io.filesystems import FileSystems
    with FileSystems.create(FileSystems.join(result_dir, _record_name(element[0]))) as f:
      f.write(json.dumps(list(element)).encode())
  return step
