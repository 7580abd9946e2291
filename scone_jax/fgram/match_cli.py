"""`scone-jax fgrams match FG --data DATA`: the f-gram match of every position of a split.

One JSON line per document, `{"doc": i, "fgram_id": [...], "length": [...]}` over the document's
own tokens (each document alone is one segment, so its first token never matches), or a
readable listing with `--format text`. Refuses f-grams built from other data unless told.
With `--tags TAGS` (`scone-jax fgrams tag`) the lengths are read from TAGS, not matched; each
tagged f-gram's id is looked up from its tokens (the same lines as without it).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Iterator

import numpy as np

from scone_jax.data import shards
from scone_jax.errors import UserError
from scone_jax.fgram import vocab as vocab_lib
from scone_jax.fgram.matcher import ExactMatcher
from scone_jax.progress import progress_bar

BATCH_TOKENS = 1 << 20  # documents are matched together, up to this many tokens per call


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("fgrams", metavar="FG", help="f-gram directory written by `scone-jax fgrams build`")
  parser.add_argument("--data", required=True, help="prepared data directory (DATA)")
  parser.add_argument("--split", default="validation", choices=shards.SPLITS)
  parser.add_argument("--max_docs", type=int, default=None, help="stop after this many documents")
  parser.add_argument("--format", default="jsonl", choices=("jsonl", "text"))
  parser.add_argument("--allow_other_data", action="store_true",
                      help="match even though FG was counted on another data directory")
  parser.add_argument("--tags", default=None, help="read the match lengths from this TAGS directory (fgrams tag)")
  parser.add_argument("--progress", action="store_true", help="show progress even when stderr is not a TTY")


def load_checked(fg_dir: str, data_dir: str, allow_other_data: bool) -> tuple[vocab_lib.FgramVocab, shards.DataMeta]:
  """Loads FG and DATA's meta and refuses a pair that does not belong together."""
  if not os.path.isdir(data_dir):
    raise UserError(f"--data {data_dir!r} does not exist: point it at a directory written by `scone-jax prepare`")
  fgrams = vocab_lib.load(fg_dir)
  data_meta = shards.load_meta(data_dir)
  fingerprint = shards.data_fingerprint(data_dir)
  if fgrams.meta.data_fingerprint != fingerprint and not allow_other_data:
    raise UserError(f"f-grams {fg_dir!r} were counted on data with fingerprint {fgrams.meta.data_fingerprint[:16]}, "
                    f"but {data_dir!r} has fingerprint {fingerprint[:16]}: rebuild them with "
                    f"`scone-jax fgrams build --data {data_dir}` or pass --allow_other_data")
  if fgrams.meta.vocab_size != data_meta.vocab_size:
    raise UserError(f"f-grams {fg_dir!r} use a vocabulary of {fgrams.meta.vocab_size} tokens but {data_dir!r} "
                    f"has {data_meta.vocab_size}: they come from different tokenizers; rebuild the f-grams")
  if fgrams.flat.size and (fgrams.flat.min() < 0 or fgrams.flat.max() >= data_meta.vocab_size):
    raise UserError(f"f-grams {fg_dir!r} hold token ids outside 0..{data_meta.vocab_size - 1}; rebuild the f-grams")
  return fgrams, data_meta


def tagged_documents(matcher: ExactMatcher, tags_dir: str, data_dir: str, split: str, documents):
  """Yields (tokens, fgram_id, match_len) per document with the lengths of TAGS (over [BOS] +
  the document; its own tokens start at 1) and each f-gram's id from its tokens."""
  k = matcher.max_n
  records = (t for path in shards.shard_paths(data_dir, split)
             for t in shards.read_records(os.path.join(tags_dir, os.path.basename(path))))
  for doc, tag in zip(documents, records):
    match_len = np.frombuffer(tag, np.uint8).astype(np.int32)[1:]
    padded = np.concatenate([np.full(k - 1, -1, np.int32), doc.astype(np.int32)])
    windows = padded[np.arange(len(doc))[:, None] + np.arange(k)[None, :]]
    windows = np.where(np.arange(k)[None, :] >= k - match_len[:, None], windows, -1)   # the f-gram only
    fgram_id = matcher.match_last(windows)[0] if len(doc) else np.zeros(0, np.int32)
    yield doc, np.where(match_len >= 2, fgram_id, -1).astype(np.int32), match_len


def match_documents(matcher: ExactMatcher, documents) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """Yields (tokens, fgram_id, match_len) per document, matching batches of documents in one
  call: documents are laid end to end, each its own segment."""
  batch: list[np.ndarray] = []
  size = 0

  def flush():
    lengths = np.array([len(d) for d in batch])
    tokens = np.concatenate(batch) if size else np.zeros(0, np.int32)
    segment_ids = np.repeat(np.arange(1, len(batch) + 1, dtype=np.int32), lengths)
    fgram_id, match_len = matcher.match(tokens, segment_ids)
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    for d, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
      yield batch[d], fgram_id[a:b], match_len[a:b]

  for doc in documents:
    batch.append(doc)
    size += len(doc)
    if size >= BATCH_TOKENS:
      yield from flush()
      batch, size = [], 0
  if batch:
    yield from flush()


class _Pieces:
  """Token id -> readable piece, from DATA's tokenizer (SentencePiece or Hugging Face) when it
  loads, else the id itself."""

  def __init__(self, data_dir: str):
    from scone_jax.data.tokenizer import open_data_tokenizer
    try:
      self._sp = open_data_tokenizer(data_dir)
    except (UserError, OSError, RuntimeError, ValueError):
      self._sp = None

  @property
  def available(self) -> bool:
    return self._sp is not None

  def __call__(self, token: int) -> str:
    piece = self._sp.id_to_piece(int(token)) if self._sp is not None and 0 <= token < self._sp.vocab_size else None
    return repr(piece) if piece is not None else str(int(token))


def _write_text(out, doc: int, tokens: np.ndarray, fgram_id: np.ndarray, match_len: np.ndarray, pieces: _Pieces) -> None:
  matched = int((fgram_id >= 0).sum())
  out.write(f"doc {doc}: {len(tokens)} tokens, {matched} matched\n")
  for i, (token, r, n) in enumerate(zip(tokens.tolist(), fgram_id.tolist(), match_len.tolist())):
    line = f"  {i:6d}  {token:7d}" + (f"  {pieces(token):<16s}" if pieces.available else "")
    if r >= 0:
      span = " ".join(pieces(t) for t in tokens[i - n + 1:i + 1].tolist())
      line += f"  f-gram {r} (n={n}): {span}"
    out.write(line + "\n")


def run(args: argparse.Namespace) -> int:
  if args.max_docs is not None and args.max_docs < 0:
    raise UserError(f"--max_docs must be >= 0, got {args.max_docs}")
  fgrams, data_meta = load_checked(args.fgrams, args.data, args.allow_other_data)
  matcher = ExactMatcher.checked(fgrams, args.fgrams)
  shards.shard_paths(args.data, args.split)  # a clear error before any output if there are none
  total = data_meta.num_documents.get(args.split)
  if args.max_docs is not None:
    total = args.max_docs if total is None else min(total, args.max_docs)

  def documents():
    for i, doc in enumerate(shards.read_documents(args.data, args.split)):
      if args.max_docs is not None and i >= args.max_docs:
        return
      yield doc

  pieces = _Pieces(args.data) if args.format == "text" else None
  out = sys.stdout
  try:
    with progress_bar("matching", total, enabled=args.progress or None, transient=True) as bar:
      if args.tags:
        from scone_jax.fgram import tags as tags_lib
        tags_lib.check(args.tags, args.data, tags_lib.fgrams_sha256(args.fgrams, fgrams), fgrams.meta.max_n, len(fgrams),
                       splits=(args.split,))
        matches = tagged_documents(matcher, args.tags, args.data, args.split, documents())
      else:
        matches = match_documents(matcher, documents())
      for doc, (tokens, fgram_id, match_len) in enumerate(matches):
        if args.format == "jsonl":
          out.write(json.dumps({"doc": doc, "fgram_id": fgram_id.tolist(), "length": match_len.tolist()},
                               separators=(",", ":")) + "\n")
        else:
          _write_text(out, doc, tokens, fgram_id, match_len, pieces)
        bar.advance()
    out.flush()
  except BrokenPipeError:
    # A reader such as `head` closed the pipe: stop quietly, as command-line tools do.
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
  return 0
