"""`scone-jax bench count`: f-gram counting throughput, ours vs a plain sort-and-count.

Both count every n-gram for n = 2..K on the same corpus in one run, side by side:
- ours: scone_jax.fgram.count (chunked, spilled, apriori-pruned K-1 passes);
- plain: every n-gram of every length, no pruning, one `np.unique(keys, return_counts=True)` per
  n over the whole corpus in memory (keys = id of the (n-1)-prefix among all distinct
  (n-1)-grams * |V| + last token, the same exact key scheme without the pruning).
The corpus is synthetic Zipfian token ids (fixed seed, lognormal document lengths), or the train
split of a prepared DATA repeated up to --tokens. numpy sorts on one core, so tokens/s per core is
tokens / seconds for both. The two must produce identical f-grams for the top S.

With --runner beam (scone_jax.fgram.beam_count) the corpus is written as ArrayRecord train shards
(--shard_tokens each) and counted, in one run, side by side, by the local counter (one core) and
by the Beam pipeline on the Dask runner over a loopback dask.distributed.LocalCluster of --workers
single-threaded worker processes (started and shut down here): tokens/s per core of each, their
ratio against GOAL_BEAM_PER_CORE (PASS/FAIL), and identical output; plus, for reference, the same
pipeline on the FnApi runner in this process. --memory_tokens A,B then measures peak resident
memory (VmHWM) of `scone-jax fgrams build` (local runner, a fresh process) and of the largest
Beam SDK worker process (FnApi runner, --workers processes: the harness that Dataflow, Flink and
Spark run too; the runner holds the shuffles, as their shuffle services do) at each corpus size
(shards of --shard_tokens), with the number of survivors: the worker's must not grow with them
(GOAL_MEMORY_GROWTH, PASS/FAIL). The Dask runner is not used for memory: it keeps every
intermediate result in its workers' memory (no streaming), so its workers grow with the corpus.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from scone_jax.data.shards import DataMeta, ShardWriter, load_meta, read_documents, shard_paths, write_meta
from scone_jax.errors import UserError
from scone_jax.fgram.count import DEFAULT_CHUNK_TOKENS, count_fgrams, counted_meta, decode_keys
from scone_jax.fgram.vocab import FgramVocab


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--tokens", type=int, default=50_000_000, help="corpus size in tokens (default 50M)")
  parser.add_argument("--data", default=None, help="prepared DATA to repeat instead of the synthetic corpus")
  parser.add_argument("--vocab_size", type=int, default=32_000, help="synthetic vocabulary size")
  parser.add_argument("--zipf_exponent", type=float, default=1.0, help="synthetic token-frequency exponent")
  parser.add_argument("--max_n", type=int, default=5, help="K")
  parser.add_argument("--size", type=int, default=1_000_000, help="S")
  parser.add_argument("--min_count", type=int, default=5, help="c_min")
  parser.add_argument("--chunk_tokens", type=int, default=DEFAULT_CHUNK_TOKENS, help="tokens per chunk (ours)")
  parser.add_argument("--tmp_dir", default=None, help="where ours spills (default: the system temp dir)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--runner", choices=("local", "beam"), default="local",
                      help="local: ours vs np.unique; beam: the Beam pipeline on a Dask LocalCluster vs ours")
  parser.add_argument("--workers", type=int, default=2, help="beam: LocalCluster worker processes (1 thread each)")
  parser.add_argument("--shard_tokens", type=int, default=1_000_000, help="beam: tokens per ArrayRecord shard")
  parser.add_argument("--memory_tokens", default="",
                      help="beam: comma-separated corpus sizes (e.g. 10000000,50000000) for the peak-memory lines")


GOAL_BEAM_PER_CORE = 0.5    # Beam tokens/s per core >= this x the local counter's
GOAL_MEMORY_GROWTH = 1.25   # peak Beam worker memory at the larger corpus <= this x at the smaller


def synthetic_documents(num_tokens: int, vocab_size: int, exponent: float, seed: int,
                        num_special: int = 4) -> list[np.ndarray]:
  """Zipf-Mandelbrot token ids (ids < num_special are never drawn: they are the special ids),
  shuffled so frequency does not follow id order, cut into lognormal-length documents
  (median about 400 tokens)."""
  rng = np.random.default_rng(seed)
  ranks = np.arange(1, vocab_size - num_special + 1, dtype=np.float64)
  cdf = np.cumsum(1.0 / (ranks + 2.7) ** exponent)
  cdf /= cdf[-1]
  rank_to_id = rng.permutation(vocab_size - num_special).astype(np.int32) + num_special
  tokens = rank_to_id[np.searchsorted(cdf, rng.random(num_tokens), side="right").clip(max=len(cdf) - 1)]
  lengths = np.clip(rng.lognormal(np.log(400), 1.0, num_tokens // 16 + 1), 8, 16_384).astype(np.int64)
  ends = np.cumsum(lengths)
  ends = ends[ends < num_tokens]
  return np.split(tokens, ends)


def repeated_documents(data_dir: str, num_tokens: int) -> tuple[list[np.ndarray], int, tuple[int, ...]]:
  meta = load_meta(data_dir)
  base = [d for d in read_documents(data_dir, "train") if len(d)]
  if not base:
    raise UserError(f"{data_dir!r} has no train tokens to repeat")
  docs, total = [], 0
  while total < num_tokens:
    for d in base:
      docs.append(d)
      total += len(d)
      if total >= num_tokens:
        break
  return docs, meta.vocab_size, meta.special_ids


def plain_count(documents: list[np.ndarray], vocab_size: int, special_ids, max_n: int, size: int,
                min_count: int) -> FgramVocab:
  """The baseline: np.unique over every n-gram of every length, whole corpus in memory."""
  pieces = []
  for doc in documents:
    pieces.append(np.asarray(doc, dtype=np.int64))
    pieces.append(np.array([-1], dtype=np.int64))
  tokens = np.concatenate(pieces)
  if len(special_ids):
    tokens[np.isin(tokens, np.asarray(special_ids))] = -1
  ids = tokens.copy()  # id of each position's (n-1)-gram among all distinct ones; -1 = none
  distinct: dict[int, np.ndarray] = {}
  tops = []
  v = np.uint64(vocab_size)
  for n in range(2, max_n + 1):
    positions = np.flatnonzero((ids[:-1] >= 0) & (ids[1:] >= 0))  # n-gram exists (no separator)
    keys = ids[positions].astype(np.uint64) * v + tokens[positions + n - 1].astype(np.uint64)
    if n < max_n:
      unique, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
      ids = np.full(len(tokens), -1, dtype=np.int64)
      ids[positions] = inverse
    else:
      unique, counts = np.unique(keys, return_counts=True)
    distinct[n] = unique
    keep = np.flatnonzero(counts >= min_count)
    tops.append((n, unique[keep], counts[keep]))
  lengths = np.concatenate([np.full(len(k), n) for n, k, _ in tops])
  keys = np.concatenate([k for _, k, _ in tops])
  counts = np.concatenate([c for _, _, c in tops])
  order = np.lexsort((keys, lengths, -counts))[:size]
  fgrams: list[tuple[int, ...]] = [()] * len(order)
  for n in np.unique(lengths[order]):
    rows = np.flatnonzero(lengths[order] == n)
    decoded = decode_keys(keys[order][rows], int(n), distinct, vocab_size)
    for row, toks in zip(rows, decoded.tolist()):
      fgrams[row] = tuple(toks)
  meta = counted_meta(max_n=max_n, size=size, min_count=min_count, vocab_size=vocab_size,
                      tokens_counted=int(sum(len(d) for d in documents)), num_fgrams=len(fgrams))
  return FgramVocab.from_tuples(fgrams, counts[order], meta)


def write_corpus(data_dir: str, documents, vocab_size: int, special_ids, shard_tokens: int) -> str:
  """The documents as a prepared DATA directory (train shards of about shard_tokens tokens)."""
  os.makedirs(data_dir, exist_ok=True)
  total = int(sum(len(d) for d in documents))
  num_shards = max(1, total // shard_tokens)
  train = ShardWriter(data_dir, "train", num_shards)
  for doc in documents:
    train.write(doc)
  train.close()
  validation = ShardWriter(data_dir, "validation", 1)
  validation.write(documents[0][:8])
  validation.close()
  pad, eos, bos, unk = (list(special_ids) + [-1] * 4)[:4]
  write_meta(data_dir, DataMeta(
      vocab_size=vocab_size, pad_id=pad, eos_id=eos, bos_id=bos, unk_id=unk, tokenizer_sha256="bench",
      num_documents={"train": train.num_documents, "validation": 1},
      num_tokens={"train": train.num_tokens, "validation": min(8, len(documents[0]))},
      num_shards={"train": num_shards, "validation": 1}))
  return data_dir


def _cluster(workers: int):
  """The loopback cluster. Its workers get glibc's default malloc, as the local counter's process
  has: distributed's nanny sets MALLOC_TRIM_THRESHOLD_=65536, which also turns off glibc's dynamic
  mmap threshold, so every array above 128 KB is a fresh mmap, page-faulted on first touch (15-20%
  slower numpy kernels, measured); a Dask cluster for counting should be started the same way."""
  import dask
  from dask.distributed import LocalCluster
  with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
    return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                        dashboard_address=None, memory_limit=0)


def peak_rss_mb() -> float:
  """This process's peak resident memory (VmHWM: reset at exec, unlike ru_maxrss, which a
  forked-then-exec'd child inherits from its parent)."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) / 1024
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _vm_hwm_mb(pid: int) -> float:
  try:
    with open(f"/proc/{pid}/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) / 1024
  except OSError:
    pass
  return 0.0


def _fnapi_worker_peak_mb(data_dir, args, vocab_size, special_ids) -> tuple[float, float, float, str]:
  """(largest SDK worker peak RSS, runner peak RSS, largest per-element working set, its step),
  in MB, of run_count on the FnApi runner with --workers worker processes. A thread polls the
  worker processes' VmHWM (monotonic: the last reading before a worker exits is its peak); the
  runner is this process, holding the shuffles; the working set is the peak heap of one step call
  (beam_count.MEMORY_TRACE_ENV), what a streaming runner's worker needs apart from its buffers."""
  import threading

  import psutil

  from scone_jax.fgram import beam_count
  peaks, done = {}, threading.Event()

  def poll():
    me = psutil.Process()
    while not done.is_set():
      for child in me.children(recursive=True):
        peaks[child.pid] = max(peaks.get(child.pid, 0.0), _vm_hwm_mb(child.pid))
      done.wait(0.05)

  thread = threading.Thread(target=poll, daemon=True)
  result = tempfile.mkdtemp(prefix="bench-beam-", dir=args.tmp_dir)
  trace = tempfile.mkdtemp(prefix="bench-trace-", dir=args.tmp_dir)
  before = peak_rss_mb()
  os.environ[beam_count.MEMORY_TRACE_ENV] = trace
  thread.start()
  try:
    beam_count.run_count(shard_paths(data_dir, "train"), result, vocab_size=vocab_size, special_ids=special_ids,
                         max_n=args.max_n, size=args.size, min_count=args.min_count,
                         beam_args=f"--runner=FnApiRunner --direct_running_mode=multi_processing "
                                   f"--direct_num_workers={args.workers}")
    steps = {}
    for name in os.listdir(trace):
      with open(os.path.join(trace, name)) as f:
        for line in f:
          label, peak = line.split()
          steps[label] = max(steps.get(label, 0), int(peak))
  finally:
    os.environ.pop(beam_count.MEMORY_TRACE_ENV, None)
    done.set()
    thread.join()
    shutil.rmtree(result, ignore_errors=True)
    shutil.rmtree(trace, ignore_errors=True)
  step = max(steps, key=steps.get) if steps else "-"
  return max(peaks.values(), default=0.0), max(before, peak_rss_mb()), steps.get(step, 0) / 2**20, step


def _beam_count(data_dir, args, vocab_size, special_ids, cluster, npartitions=None):
  """(seconds, ranked pieces) of run_count on the Dask cluster (cluster None: the FnApi runner in
  this process, one worker)."""
  from scone_jax.fgram import beam_count
  result = tempfile.mkdtemp(prefix="bench-beam-", dir=args.tmp_dir)
  try:
    if cluster is None:
      beam_args = "--runner=FnApiRunner --direct_num_workers=1 --direct_running_mode=in_memory"
    else:
      beam_args = f"--runner=DaskRunner --dask_client_address={cluster.scheduler_address.replace('tcp://', '')}"
      if npartitions:
        beam_args += f" --dask_npartitions={npartitions}"
    start = time.perf_counter()
    summary = beam_count.run_count(shard_paths(data_dir, "train"), result, vocab_size=vocab_size,
                                   special_ids=special_ids, max_n=args.max_n, size=args.size,
                                   min_count=args.min_count, beam_args=beam_args)
    seconds = time.perf_counter() - start
    from scone_jax.fgram import vocab as vocab_lib
    pieces = [vocab_lib.read_rows(os.path.join(result, name)) for name in summary["files"]]
    return seconds, pieces
  finally:
    shutil.rmtree(result, ignore_errors=True)


def _build_peak_rss_mb(data_dir: str, out: str, args) -> float:
  """Peak resident memory of `scone-jax fgrams build` (local runner) in a fresh process."""
  argv = ["fgrams", "build", "--data", data_dir, "--out", out, "--max_n", str(args.max_n), "--size", str(args.size),
          "--min_count", str(args.min_count), "--chunk_tokens", str(args.chunk_tokens)]
  code = ("import sys; from scone_jax import cli; from scone_jax.bench.count import peak_rss_mb; "
          f"rc = cli.main({argv!r}); print('PEAK', peak_rss_mb()); sys.exit(rc)")
  done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
  if done.returncode != 0:
    raise UserError(f"bench count: `fgrams build` on {data_dir} failed (exit {done.returncode})")
  return float(done.stdout.split("PEAK")[-1])


def run_beam(args, documents, vocab_size, special_ids, source) -> int:
  root = tempfile.mkdtemp(prefix="bench-count-", dir=args.tmp_dir)
  try:
    data_dir = write_corpus(os.path.join(root, "data"), documents, vocab_size, special_ids, args.shard_tokens)
    num_tokens = int(sum(len(d) for d in documents))
    print(f"bench count --runner beam: corpus {source}: {num_tokens:,} tokens in {len(documents):,} documents, "
          f"{len(shard_paths(data_dir, 'train'))} shards, |V|={vocab_size}, K={args.max_n}, S={args.size}, "
          f"c_min={args.min_count}; Dask LocalCluster of {args.workers} worker processes x 1 thread on "
          f"{os.cpu_count()} cores", flush=True)
    start = time.perf_counter()
    ours = count_fgrams(read_documents(data_dir, "train"), vocab_size=vocab_size, special_ids=special_ids,
                        max_n=args.max_n, size=args.size, min_count=args.min_count, chunk_tokens=args.chunk_tokens,
                        tmp_dir=args.tmp_dir)
    local_s = time.perf_counter() - start
    with _cluster(args.workers) as cluster:  # one Dask partition (task) per worker and stage
      beam_s, pieces = _beam_count(data_dir, args, vocab_size, special_ids, cluster, npartitions=args.workers)
    fnapi_s, _ = _beam_count(data_dir, args, vocab_size, special_ids, None)
    flat = np.concatenate([p[0] for p in pieces]) if pieces else np.empty(0, np.int32)
    counts = np.concatenate([p[2] for p in pieces]) if pieces else np.empty(0, np.int64)
    lengths = np.concatenate([np.diff(p[1]) for p in pieces]) if pieces else np.empty(0, np.int64)
    same = (np.array_equal(flat, ours.flat) and np.array_equal(counts, ours.counts)
            and np.array_equal(lengths, np.diff(ours.offsets)))
    local_rate = num_tokens / local_s / 1e6
    beam_rate = num_tokens / beam_s / 1e6 / args.workers
    ratio = beam_rate / local_rate
    print(f"bench count --runner beam: local {local_s:.1f} s ({local_rate:.2f} Mtok/s/core), Beam on Dask "
          f"{beam_s:.1f} s ({beam_rate:.2f} Mtok/s/core over {args.workers} workers), {len(ours):,} f-grams, "
          f"identical to local: {same}")
    print(f"bench count --runner beam: Beam/local tokens/s per core {ratio:.2f} (goal >= {GOAL_BEAM_PER_CORE}): "
          f"{'PASS' if ratio >= GOAL_BEAM_PER_CORE and same else 'FAIL'}", flush=True)
    fnapi_ratio = num_tokens / fnapi_s / 1e6 / local_rate
    print(f"bench count --runner beam: reference, not the goal: the same pipeline on the FnApi runner in one process "
          f"{fnapi_s:.1f} s, {num_tokens / fnapi_s / 1e6:.2f} Mtok/s/core, {fnapi_ratio:.2f}x local (load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)", flush=True)
    ok = same
    sizes = [int(float(t)) for t in args.memory_tokens.split(",") if t.strip()]
    if sizes:
      peaks = []
      for size in sizes:
        docs = synthetic_documents(size, vocab_size, args.zipf_exponent, args.seed)
        mem_dir = write_corpus(os.path.join(root, f"mem{size}"), docs, vocab_size, special_ids, args.shard_tokens)
        del docs
        local_mb = _build_peak_rss_mb(mem_dir, os.path.join(root, f"fg{size}"), args)
        from scone_jax.fgram import vocab as vocab_lib
        built = vocab_lib.load(os.path.join(root, f"fg{size}"))
        worker_mb, runner_mb, working_mb, step = _fnapi_worker_peak_mb(mem_dir, args, vocab_size, special_ids)
        survivors = _survivors(mem_dir, args, vocab_size, special_ids)
        peaks.append(working_mb)
        print(f"bench count --runner beam: memory at {size:,} tokens ({len(shard_paths(mem_dir, 'train'))} shards, "
              f"{survivors:,} survivors of c_min, {len(built):,} f-grams kept): `fgrams build` local peak RSS "
              f"{local_mb:.0f} MB, largest Beam SDK worker peak RSS {worker_mb:.0f} MB (FnApi runner, {args.workers} worker "
              f"processes; the runner process, which holds the shuffles, {runner_mb:.0f} MB); largest working set of one "
              f"step call {working_mb:.0f} MB ({step})", flush=True)
        shutil.rmtree(mem_dir, ignore_errors=True)
      growth = peaks[-1] / peaks[0]
      print(f"bench count --runner beam: Beam per-element working set {sizes[-1]:,} vs {sizes[0]:,} tokens: x{growth:.2f} "
            f"(goal <= {GOAL_MEMORY_GROWTH}): {'PASS' if growth <= GOAL_MEMORY_GROWTH else 'FAIL'}")
    return 0 if ok else 1
  finally:
    shutil.rmtree(root, ignore_errors=True)


def _survivors(data_dir, args, vocab_size, special_ids) -> int:
  """Number of n-grams (2..K) reaching c_min: the count with S unbounded (the local counter)."""
  got = count_fgrams(read_documents(data_dir, "train"), vocab_size=vocab_size, special_ids=special_ids,
                     max_n=args.max_n, size=1 << 62, min_count=args.min_count, chunk_tokens=args.chunk_tokens,
                     tmp_dir=args.tmp_dir)
  return len(got)


def run(args: argparse.Namespace) -> int:
  if args.tokens < 1000:
    raise UserError(f"--tokens {args.tokens} is too small to measure: pass 1000 or more")
  if args.data:
    documents, vocab_size, special_ids = repeated_documents(args.data, args.tokens)
    source = f"{args.data} repeated"
  else:
    if args.vocab_size < 8:
      raise UserError(f"--vocab_size {args.vocab_size} is too small: pass 8 or more")
    documents = synthetic_documents(args.tokens, args.vocab_size, args.zipf_exponent, args.seed)
    vocab_size, special_ids, source = args.vocab_size, (0, 1, 2, 3), f"synthetic Zipf({args.zipf_exponent})"
  if args.runner == "beam":
    return run_beam(args, documents, vocab_size, tuple(special_ids), source)
  num_tokens = sum(len(d) for d in documents)
  print(f"bench count: corpus {source}: {num_tokens:,} tokens in {len(documents):,} documents, |V|={vocab_size}, "
        f"K={args.max_n}, S={args.size}, c_min={args.min_count}", flush=True)

  start = time.perf_counter()
  ours = count_fgrams(documents, vocab_size=vocab_size, special_ids=special_ids, max_n=args.max_n,
                      size=args.size, min_count=args.min_count, chunk_tokens=args.chunk_tokens,
                      tmp_dir=args.tmp_dir)
  ours_s = time.perf_counter() - start
  start = time.perf_counter()
  plain = plain_count(documents, vocab_size, special_ids, args.max_n, args.size, args.min_count)
  plain_s = time.perf_counter() - start

  same = (np.array_equal(ours.flat, plain.flat) and np.array_equal(ours.offsets, plain.offsets)
          and np.array_equal(ours.counts, plain.counts))
  ours_rate, plain_rate = num_tokens / ours_s / 1e6, num_tokens / plain_s / 1e6
  print(f"bench count: ours {ours_s:.1f} s, np.unique {plain_s:.1f} s, {len(ours):,} f-grams "
        f"(lowest count {int(ours.counts[-1]) if len(ours) else 0}), top S identical: {same}")
  print(f"bench count: ours {ours_rate:.2f} Mtok/s/core, np.unique {plain_rate:.2f} Mtok/s/core, "
        f"ratio {ours_rate / plain_rate:.2f} (numpy sorts on 1 core of {os.cpu_count()})")
  if not same:
    print("bench count: MISMATCH between ours and np.unique")
    return 1
  return 0
