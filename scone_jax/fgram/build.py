"""`scone-jax fgrams build`: counts the train split of DATA and writes the f-gram vocabulary FG.

    scone-jax fgrams build --data DATA --max_n K --size S [--min_count 5] [--runner local|beam]
                           [--beam_args='--runner=DaskRunner --dask_client_address=HOST:PORT'] --out FG

writes FG/fgrams.parquet (or its shards past vocab.ROWS_PER_FILE rows) and FG/meta.json
(scone_jax.fgram.vocab, atomically). The local runner is scone_jax.fgram.count (numpy, bounded
memory, spills to --tmp_dir, default FG's parent); the beam runner is scone_jax.fgram.beam_count,
whose pipeline options all come in the one string --beam_args (beam_runner.add_beam_args /
parse_beam_args, shared with every Beam command); without a --runner in it, the FnApiRunner with
worker processes (offline-safe). The Beam workers write the ranked files themselves; they are
copied into FG, never gathered in this process.
"""
from __future__ import annotations

import argparse
import dataclasses
import os

from scone_jax.data.shards import data_fingerprint, load_meta, read_documents, shard_paths, verify_shards
from scone_jax.errors import UserError
from scone_jax.fgram import beam_count, beam_runner, vocab as vocab_lib
from scone_jax.fgram.count import DEFAULT_CHUNK_TOKENS, count_fgrams, counted_meta, validate_params
from scone_jax.outputs import check_output

ACCEPTS_EXTRA = True  # only to refuse them with a pointer to --beam_args
RUNNERS = ("local", "beam")


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--data", required=True, help="prepared data directory (scone-jax prepare --out)")
  parser.add_argument("--max_n", type=int, required=True, help="K: longest f-gram, in tokens (>= 2)")
  parser.add_argument("--size", type=int, required=True, help="S: number of f-grams to keep")
  parser.add_argument("--min_count", type=int, default=5, help="c_min: keep n-grams seen at least this often")
  parser.add_argument("--runner", choices=RUNNERS, default="local",
                      help="local: numpy on this host; beam: Apache Beam pipeline (options in --beam_args)")
  parser.add_argument("--out", required=True, help="output directory FG")
  parser.add_argument("--chunk_tokens", type=int, default=DEFAULT_CHUNK_TOKENS,
                      help="local runner: tokens per in-memory chunk (about 60 bytes each)")
  parser.add_argument("--tmp_dir", default=None, help="where spilled runs go (default: FG's parent)")
  parser.add_argument("--progress", action="store_true", help="show progress even when stderr is not a TTY")
  beam_runner.add_beam_args(parser)


def _check_data(data_dir: str):
  if not os.path.isdir(data_dir):
    raise UserError(f"--data {data_dir!r} is not a directory: run `scone-jax prepare --out {data_dir}` first")
  meta = load_meta(data_dir)
  if not isinstance(meta.vocab_size, int) or meta.vocab_size < 1:
    raise UserError(f"{os.path.join(data_dir, 'meta.json')!r} has vocab_size {meta.vocab_size!r}; re-run `scone-jax prepare`")
  verify_shards(data_dir, ("train",))
  return meta, shard_paths(data_dir, "train")


def _check_out(out_dir: str, data_dir: str) -> None:
  """The output guard (scone_jax/outputs.py): FG is not DATA, not inside it, and replaces only
  an f-gram vocabulary; then its parent is created."""
  check_output(out_dir, "fgrams", inputs={"--data": data_dir})
  out = os.path.abspath(out_dir)
  parent = os.path.dirname(out)
  blocker = parent
  while blocker and not os.path.exists(blocker):
    blocker = os.path.dirname(blocker)
  if blocker and not os.path.isdir(blocker):
    raise UserError(f"--out {out_dir!r}: {blocker!r} is a file, not a directory; pass a writable path")
  try:
    os.makedirs(parent, exist_ok=True)
  except OSError as e:
    raise UserError(f"--out {out_dir!r}: cannot create its parent {parent!r} ({e.strerror}); pass a writable path") from e
  if not os.access(parent, os.W_OK | os.X_OK):
    raise UserError(f"--out {out_dir!r}: {parent!r} is not writable; pass a writable path")


def build(data_dir: str, out_dir: str, *, max_n: int, size: int, min_count: int = 5, runner: str = "local",
          chunk_tokens: int = DEFAULT_CHUNK_TOKENS, tmp_dir: str | None = None, progress: bool | None = False,
          beam_args: str | list[str] | tuple[str, ...] = "", rows_per_file: int = vocab_lib.ROWS_PER_FILE,
          num_buckets: int | None = None) -> vocab_lib.FgramVocab:
  """Counts DATA's train split, writes FG, returns the vocabulary (rank order, docs/METHODS.md 1.1).
  progress: bars on stderr (local runner; None = when stderr is a TTY). beam_args: the
  --beam_args string (or its split list). rows_per_file: parquet shard size (both runners)."""
  validate_params(max_n, size, min_count)
  if runner not in RUNNERS:
    raise UserError(f"--runner {runner!r} is not one of {', '.join(RUNNERS)}")
  if chunk_tokens < 1:
    raise UserError(f"--chunk_tokens {chunk_tokens} is below 1: pass a positive number of tokens")
  meta, paths = _check_data(data_dir)
  _check_out(out_dir, data_dir)
  tmp_dir = tmp_dir or os.path.dirname(os.path.abspath(out_dir))
  if not os.path.isdir(tmp_dir):
    raise UserError(f"--tmp_dir {tmp_dir!r} is not a directory: pass an existing writable directory")
  nothing = UserError(f"no n-gram of 2..{max_n} tokens occurs {min_count} times in the train split of "
                      f"{data_dir!r}: lower --min_count")
  if runner == "local":
    counted = count_fgrams(read_documents(data_dir, "train"), vocab_size=meta.vocab_size,
                           special_ids=meta.special_ids, max_n=max_n, size=size, min_count=min_count,
                           chunk_tokens=chunk_tokens, tmp_dir=tmp_dir, progress=progress,
                           source=f"train split of {data_dir!r}")
    if len(counted) == 0:
      raise nothing
    fgram_meta = dataclasses.replace(counted.meta, data_fingerprint=data_fingerprint(data_dir))
    vocab_lib.save(dataclasses.replace(counted, meta=fgram_meta), out_dir, rows_per_file=rows_per_file)
  else:
    with beam_count.beam_result_dir(beam_args, tmp_dir) as result_dir:
      summary = beam_count.run_count(paths, result_dir, vocab_size=meta.vocab_size, special_ids=meta.special_ids,
                                     max_n=max_n, size=size, min_count=min_count, beam_args=beam_args,
                                     num_buckets=num_buckets, rows_per_file=rows_per_file)
      if summary["num_fgrams"] == 0:
        raise nothing
      fgram_meta = dataclasses.replace(
          counted_meta(max_n=max_n, size=size, min_count=min_count, vocab_size=meta.vocab_size,
                       tokens_counted=summary["tokens_counted"], num_fgrams=summary["num_fgrams"]),
          data_fingerprint=data_fingerprint(data_dir))
      beam_count.install_files(result_dir, summary, out_dir, fgram_meta)
  return vocab_lib.load(out_dir)


def run(args: argparse.Namespace) -> int:
  extra = list(getattr(args, "extra", []) or [])
  if extra:
    raise UserError(f"unrecognized arguments {' '.join(extra)}: Beam pipeline options go in one flag, "
                    "--beam_args='--runner=... --OPTION=VALUE' (with --runner beam)")
  if args.beam_args and args.runner != "beam":
    raise UserError(f"--beam_args {args.beam_args!r}: pipeline options apply only with --runner beam")
  progress = args.progress or None  # None: bars when stderr is a TTY
  fgram_vocab = build(args.data, args.out, max_n=args.max_n, size=args.size, min_count=args.min_count,
                      runner=args.runner, chunk_tokens=args.chunk_tokens, tmp_dir=args.tmp_dir,
                      progress=progress, beam_args=args.beam_args)
  lengths = fgram_vocab.lengths
  by_length = ", ".join(f"n={n}: {int((lengths == n).sum())}" for n in range(2, args.max_n + 1))
  print(f"wrote {len(fgram_vocab)} f-grams to {args.out} ({by_length}; counts {int(fgram_vocab.counts[0])}.."
        f"{int(fgram_vocab.counts[-1])}; {fgram_vocab.meta.tokens_counted} tokens counted)")
  return 0
