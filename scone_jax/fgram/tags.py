"""Pre-tagged data (TAGS): every input's f-gram match length, computed once, read by training.

    scone-jax fgrams tag FG --data DATA --out TAGS [--processes N]
    scone-jax fgrams tag FG --data DATA --out TAGS --runner beam [--beam_args='--runner=DaskRunner ...']

For every document of every split of DATA, the length of the longest f-gram of FG ending at each
input of [BOS] + the document (1 = no match; docs/METHODS.md 1.2, whole documents), one uint8
per input (K <= 255). TAGS has DATA's shard names (`train-00000-of-00004.array_record`, record i
of a shard = document i of the same DATA shard) and a meta.json with the identities of the DATA
and the f-gram file it was made from, K, and every shard's sha256. Written into a temporary
directory and renamed: never half-written.

Training with `TAGS_DIR` (FgramConfig.tags_dir) reads the lengths instead of matching: an f-gram
ending at i is x_{i-n+1..i}, so the batch's distinct f-grams (A_f's inputs) come from the tokens
themselves and the training data processes build no matcher (the paper pre-tags its data too, its
appendix F).

Local runner: shards are tagged independently by --processes worker processes, each holding the
whole matcher (about 100 bytes per f-gram). Beam runner (scone_jax.fgram.beam_tags): a join of
every shard's windows with the vocabulary by hash bucket, K-1 passes, no worker holds either;
pipeline options in --beam_args as for `fgrams build`. Both write the same bytes.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import tempfile

import numpy as np

from scone_jax.data import shards
from scone_jax.errors import UserError
from scone_jax.fgram import beam_runner, vocab as fgram_vocab
from scone_jax.integrity import file_sha256
from scone_jax.outputs import check_output
from scone_jax.progress import progress_bar

META = "meta.json"
KIND = "scone-jax tags"


def add_arguments(p: argparse.ArgumentParser) -> None:
  p.add_argument("fgrams", help="f-gram vocabulary FG (scone-jax fgrams build --out)")
  p.add_argument("--data", required=True, help="prepared data directory DATA (the one FG was counted on)")
  p.add_argument("--out", required=True, help="output directory TAGS")
  p.add_argument("--processes", type=int, default=0, help="local runner: worker processes (0 = one per core)")
  p.add_argument("--runner", choices=("local", "beam"), default="local",
                 help="local: worker processes on this host; beam: an Apache Beam pipeline (options in --beam_args)")
  beam_runner.add_beam_args(p)
  p.add_argument("--progress", action="store_true", help="show progress even when stderr is not a TTY")


def tag_document(matcher, bos: int, doc: np.ndarray) -> bytes:
  """uint8 match length of every input of [BOS] + doc."""
  _, lengths = matcher.match(np.concatenate([[bos], doc]).astype(np.int32))
  return lengths.astype(np.uint8).tobytes()


_WORKER: dict = {}


def _tag_shard(job: tuple[str, str, str, int]) -> tuple[str, str, int]:
  fg_dir, src, dst, bos = job
  if "matcher" not in _WORKER or _WORKER.get("fg") != fg_dir:
    from scone_jax.fgram.matcher import ExactMatcher
    _WORKER.update(fg=fg_dir, matcher=ExactMatcher.checked(fgram_vocab.load(fg_dir), fg_dir))
  matcher = _WORKER["matcher"]
  writer = shards.ArrayRecordWriter(dst, shards.WRITER_OPTIONS)
  n = 0
  try:
    for record in shards.read_records(src):
      writer.write(tag_document(matcher, bos, shards.decode_document(record)))
      n += 1
  finally:
    writer.close()
  return os.path.basename(dst), file_sha256(dst), n


def build_tags(fg_dir: str, data_dir: str, out_dir: str, *, processes: int = 0, progress: bool | None = False,
               runner: str = "local", beam_args: str | list[str] = "", tmp_dir: str | None = None) -> dict:
  """Tags every split of DATA with FG's matches into out_dir (atomically). Returns its meta."""
  meta = shards.load_meta(data_dir)
  shards.verify_shards(data_dir)
  fg_meta = fgram_vocab.load_meta(fg_dir)
  if fg_meta.data_fingerprint and fg_meta.data_fingerprint != shards.data_fingerprint(data_dir):
    raise UserError(f"f-grams in {fg_dir!r} were counted on other data than {data_dir!r}: tag the data they "
                    "were counted on, or rebuild them")
  if fg_meta.max_n > 255:
    raise UserError(f"K = {fg_meta.max_n} does not fit a uint8 tag; f-grams of up to 255 tokens are supported")
  check_output(out_dir, "tags", inputs={"--data": data_dir, "FG": fg_dir})
  out = os.path.abspath(out_dir)
  os.makedirs(os.path.dirname(out), exist_ok=True)
  paths = [path for split in shards.SPLITS if meta.num_documents.get(split) for path in shards.shard_paths(data_dir, split)]
  tmp = tempfile.mkdtemp(prefix=".tags-", dir=os.path.dirname(out))
  try:
    if runner == "beam":
      fgram_vocab.verify_files(fg_dir, fg_meta)
      identity = fgram_vocab.fgrams_sha256(fg_dir, fg_meta)
      hashes, documents = _tag_with_beam(paths, fg_dir, meta, fg_meta, tmp, beam_args, tmp_dir)
      num_fgrams = fg_meta.num_fgrams
    else:
      vocab = fgram_vocab.load(fg_dir)
      identity, num_fgrams = fgrams_sha256(fg_dir, vocab), len(vocab)
      hashes, documents = _tag_locally(paths, fg_dir, meta.bos_id, tmp, processes, progress)
    raw = {"kind": KIND, "data_fingerprint": shards.data_fingerprint(data_dir), "fgrams_sha256": identity,
           "max_n": fg_meta.max_n, "num_fgrams": num_fgrams, "num_documents": documents, "shard_sha256": hashes}
    with open(os.path.join(tmp, META), "w") as f:
      json.dump(raw, f, indent=2, sort_keys=True)
    if os.path.isdir(out):
      shutil.rmtree(out)   # check_output allowed only an older TAGS here
    os.rename(tmp, out)
    return raw
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def _tag_with_beam(paths, fg_dir, meta, fg_meta, tmp, beam_args, tmp_dir) -> tuple[dict, int]:
  from apache_beam.io.filesystems import FileSystems

  from scone_jax.fgram import beam_count, beam_tags
  hashes, documents = {}, 0
  with beam_count.beam_result_dir(beam_args, tmp_dir) as result_dir:
    for name, sha, n in beam_tags.run_tags(paths, fg_dir, result_dir, vocab_size=meta.vocab_size, bos=meta.bos_id,
                                           max_n=fg_meta.max_n, beam_args=beam_args):
      dst = os.path.join(tmp, name)
      with FileSystems.open(FileSystems.join(result_dir, name)) as src, open(dst, "wb") as f:
        shutil.copyfileobj(src, f, 1 << 22)
      if file_sha256(dst) != sha:
        raise RuntimeError(f"the Beam pipeline's {name} changed on its way into TAGS (sha256 differs)")
      hashes[name], documents = sha, documents + n
  return hashes, documents


def _tag_locally(paths, fg_dir, bos, tmp, processes, progress) -> tuple[dict, int]:
  jobs = [(os.path.abspath(fg_dir), path, os.path.join(tmp, os.path.basename(path)), bos) for path in paths]
  workers = processes or os.cpu_count() or 1
  hashes, documents = {}, 0
  with progress_bar("tagging (shards)", len(jobs), enabled=progress) as bar:
    if workers == 1:
      results = map(_tag_shard, jobs)
    else:
      pool = concurrent.futures.ProcessPoolExecutor(max_workers=min(workers, len(jobs)))
      results = pool.map(_tag_shard, jobs)
    try:
      for name, sha, n in results:
        hashes[name], documents = sha, documents + n
        bar.advance()
    finally:
      if workers != 1:
        pool.shutdown(wait=True, cancel_futures=True)
  return hashes, documents


def fgrams_sha256(fg_dir: str, vocab) -> str:
  """The identity of an f-gram file (what runs, stores and TAGS record)."""
  return fgram_vocab.fgrams_sha256(fg_dir, vocab.meta)


def check(tags_dir: str, data_dir: str, fgrams_sha256: str, max_n: int, num_fgrams: int, splits=shards.SPLITS) -> dict:
  """TAGS is a closed set made from this DATA and this f-gram file: one-line UserError if not."""
  path = os.path.join(tags_dir, META)
  try:
    with open(path) as f:
      raw = json.load(f)
  except FileNotFoundError:
    raise UserError(f"{path!r} does not exist: TAGS_DIR must be written by `scone-jax fgrams tag`") from None
  except ValueError as e:
    raise UserError(f"{path!r} is not valid JSON ({e}): rerun `scone-jax fgrams tag`") from e
  if not isinstance(raw, dict) or raw.get("kind") != KIND:
    raise UserError(f"{path!r} is not the meta.json of `scone-jax fgrams tag` output")
  if raw.get("data_fingerprint") != shards.data_fingerprint(data_dir):
    raise UserError(f"TAGS {tags_dir!r} were made from other data than {data_dir!r}: rerun `scone-jax fgrams tag`")
  if raw.get("fgrams_sha256") != fgrams_sha256 or raw.get("max_n") != max_n:
    raise UserError(f"TAGS {tags_dir!r} were made with another f-gram file than the run's: rerun `scone-jax fgrams tag`")
  if raw.get("num_fgrams") != num_fgrams:
    raise UserError(f"TAGS {tags_dir!r} hold the matches of all {raw.get('num_fgrams')} f-grams of the file, the run uses "
                    f"{num_fgrams} (FgramConfig.size): drop TAGS_DIR, or tag a file of {num_fgrams} f-grams")
  meta = shards.load_meta(data_dir)
  for split in splits:
    for src in shards.shard_paths(data_dir, split) if meta.num_documents.get(split) else []:
      name = os.path.basename(src)
      shard = os.path.join(tags_dir, name)
      if not os.path.isfile(shard):
        raise UserError(f"{shard!r} is missing: TAGS {tags_dir!r} is incomplete; rerun `scone-jax fgrams tag`")
      if file_sha256(shard) != raw.get("shard_sha256", {}).get(name):
        raise UserError(f"{shard!r} does not match the sha256 in {path} (corrupted or replaced); "
                        "rerun `scone-jax fgrams tag`")
  return raw


def run(args) -> int:
  import sys
  if args.beam_args and args.runner != "beam":
    raise UserError(f"--beam_args {args.beam_args!r}: pipeline options apply only with --runner beam")
  raw = build_tags(args.fgrams, args.data, args.out, processes=args.processes,
                   progress=args.progress or (None if sys.stderr.isatty() else False),
                   runner=args.runner, beam_args=args.beam_args)
  print(f"tagged {raw['num_documents']:,} documents of {args.data} with {raw['num_fgrams']:,} f-grams (K = "
        f"{raw['max_n']}) into {args.out}: {len(raw['shard_sha256'])} shards")
  return 0
