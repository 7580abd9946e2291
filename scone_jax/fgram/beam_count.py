"""Corpus-scale f-gram counting as an Apache Beam pipeline (same result as scone_jax.fgram.count).

The graph, for K = max_n:
  shard paths -> Reshuffle -> ReadShard (one ArrayRecord record = one document, raw bytes)
  for n = 2..K:  documents -> CountNgrams(n, side input: survivors of pass n-1)
                 -> CombinePerKey(sum) -> Filter(count >= c_min)          = survivors of pass n
  Flatten(survivors of every pass) -> Top.Of(S, rank key) -> WriteRanked (one parquet file)
An n-gram is a tuple of ints; a candidate of pass n > 2 must have its (n-1)-prefix and
(n-1)-suffix among the survivors of pass n-1 (apriori pruning, exact). The rank key is
(-count, n, tokens), the order of docs/METHODS.md 1.1, so the output rows equal the local counter's.

Runs on the DirectRunner in-process by default; any Beam pipeline option (--runner=DataflowRunner,
--project, --temp_location, Flink/Spark options, ...) passes through. On a remote runner the shard
paths must be readable by the workers and --temp_location must be a shared location (the ranked
result is written there and read back here). Top.Of gathers the S winners on one worker: fine for
S up to tens of millions.
"""
from __future__ import annotations

import collections
import os
import shutil
import tempfile
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from array_record.python.array_record_module import ArrayRecordReader

from scone_jax.fgram.count import counted_meta, validate_params
from scone_jax.fgram.vocab import FgramVocab

DIRECT_DEFAULTS = ["--runner=DirectRunner", "--direct_num_workers=1", "--direct_running_mode=in_memory"]


def rank_key(fgram_count: tuple[tuple[int, ...], int]) -> tuple:
  """Smaller is better: (count desc, n asc, token ids asc)."""
  fgram, count = fgram_count
  return (-count, len(fgram), fgram)


def read_shard(path: str):
  """Yields every record (one document, little-endian int32 ids) of one ArrayRecord shard."""
  reader = ArrayRecordReader(path)
  try:
    n = reader.num_records()
    for start in range(0, n, 1024):
      yield from reader.read(list(range(start, min(n, start + 1024))))
  finally:
    reader.close()


def document_ngrams(record: bytes, n: int, special_ids: frozenset[int]) -> list[tuple[int, ...]]:
  """Every n-gram of one document (as tuples) that holds no special id."""
  doc = np.frombuffer(record, dtype="<i4")
  if len(doc) < n:
    return []
  windows = np.lib.stride_tricks.sliding_window_view(doc, n)
  if special_ids:
    windows = windows[~np.isin(windows, list(special_ids)).any(axis=1)]
  return list(map(tuple, windows.tolist()))


def _count_pass(record: bytes, survivors, n: int, special_ids: frozenset[int]):
  """Per document: (n-gram, count) of its candidates of pass n, pre-summed within the document."""
  grams = document_ngrams(record, n, special_ids)
  if survivors is not None:
    grams = [g for g in grams if g[:-1] in survivors and g[1:] in survivors]
  return collections.Counter(grams).items()


def _write_ranked(ranked: list, tokens_counted: int, path: str) -> str:
  """Writes the ranked (tuple, count) list as parquet (tokens, count) with tokens_counted metadata."""
  from apache_beam.io.filesystems import FileSystems
  table = pa.table({"tokens": pa.array([list(g) for g, _ in ranked], pa.list_(pa.int32())),
                    "count": pa.array([c for _, c in ranked], pa.int64())})
  table = table.replace_schema_metadata({"tokens_counted": str(tokens_counted)})
  with FileSystems.create(path) as f:
    pq.write_table(table, f)
  return path


def _read_ranked(path: str, *, max_n: int, size: int, min_count: int, vocab_size: int) -> FgramVocab:
  from apache_beam.io.filesystems import FileSystems
  with FileSystems.open(path) as f:
    table = pq.read_table(f)
  tokens = table.column("tokens").combine_chunks()
  offsets = np.asarray(tokens.offsets, dtype=np.int64)
  counts = np.asarray(table.column("count"), dtype=np.int64)
  meta = counted_meta(max_n=max_n, size=size, min_count=min_count, vocab_size=vocab_size,
                      tokens_counted=int(table.schema.metadata[b"tokens_counted"]), num_fgrams=len(counts))
  return FgramVocab(np.asarray(tokens.values, dtype=np.int32), offsets - offsets[0], counts, meta)


def build_pipeline(pipeline, shard_paths: list[str], *, special_ids, max_n: int, size: int, min_count: int,
                   result_path: str):
  """Adds the counting graph to `pipeline`; running it writes the ranked f-grams to result_path."""
  import apache_beam as beam
  specials = frozenset(int(s) for s in special_ids)
  records = (pipeline
             | "ShardPaths" >> beam.Create(sorted(shard_paths))
             | "SpreadShards" >> beam.Reshuffle()
             | "ReadShard" >> beam.FlatMap(read_shard))
  tokens_counted = (records
                    | "DocumentLength" >> beam.Map(lambda record: len(record) // 4)
                    | "TokensCounted" >> beam.CombineGlobally(sum))
  survivors_by_pass = []
  previous = None
  for n in range(2, max_n + 1):
    side = beam.pvalue.AsDict(previous) if previous is not None else None
    counted = (records
               | f"Candidates{n}" >> beam.FlatMap(_count_pass, side, n, specials)
               | f"Sum{n}" >> beam.CombinePerKey(sum))
    previous = counted | f"MinCount{n}" >> beam.Filter(lambda kv: kv[1] >= min_count)
    survivors_by_pass.append(previous)
  return (survivors_by_pass
          | "AllPasses" >> beam.Flatten()
          | "TopS" >> beam.combiners.Top.Of(size, key=rank_key, reverse=True)
          | "WriteRanked" >> beam.Map(_write_ranked, beam.pvalue.AsSingleton(tokens_counted), result_path))


def count_fgrams_beam(shard_paths: list[str], *, vocab_size: int, special_ids=(), max_n: int, size: int,
                      min_count: int = 5, beam_args: list[str] | tuple[str, ...] = (),
                      tmp_dir: str | None = None) -> FgramVocab:
  """Runs the pipeline (DirectRunner in-process unless beam_args name another runner) and returns
  the same FgramVocab as scone_jax.fgram.count.count_fgrams on the same documents (vocab_size
  only goes into its meta)."""
  import apache_beam as beam
  from apache_beam.io.filesystems import FileSystems
  from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions
  validate_params(max_n, size, min_count)
  args = list(beam_args)
  if not any(a == "--runner" or a.startswith("--runner=") for a in args):
    args = DIRECT_DEFAULTS + args
  options = PipelineOptions(args)
  remote_tmp = options.view_as(GoogleCloudOptions).temp_location
  local_tmp = None
  if remote_tmp:
    result_path = FileSystems.join(remote_tmp, f"fgrams-{uuid.uuid4().hex}.parquet")
  else:
    local_tmp = tempfile.mkdtemp(prefix=".fgram-beam-", dir=tmp_dir)
    result_path = os.path.join(local_tmp, "ranked.parquet")
  try:
    with beam.Pipeline(options=options) as pipeline:
      build_pipeline(pipeline, shard_paths, special_ids=special_ids, max_n=max_n, size=size,
                     min_count=min_count, result_path=result_path)
    return _read_ranked(result_path, max_n=max_n, size=size, min_count=min_count, vocab_size=vocab_size)
  finally:
    if local_tmp is not None:
      shutil.rmtree(local_tmp, ignore_errors=True)
    elif FileSystems.exists(result_path):
      FileSystems.delete([result_path])
