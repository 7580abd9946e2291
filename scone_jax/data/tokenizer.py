"""The SentencePiece tokenizer of a prepared data directory: training, loading, encode/decode.

A trained model is lossless: `decode(encode(text)) == text` for every string (code, tabs,
newlines, runs of spaces, any Unicode). It takes four things:
  - identity normalization (no NFKC), no dummy prefix, no whitespace collapsing;
  - byte fallback, so a character outside the vocabulary becomes its UTF-8 bytes, not <unk>;
  - whitespace-only pieces, so indentation is cheap;
  - an escape for U+2581 ("▁"), which SentencePiece uses internally for a space and would
    otherwise decode to " ". A literal U+2581 is normalized to U+E000 "1" and a literal U+E000
    to U+E000 "2"; the model's denormalizer maps them back. Both rules live in the model file,
    so any SentencePiece reader (seqio's vocabulary included) decodes losslessly.
Ids: pad=0, eos=1, bos=2, unk=3; byte pieces follow, then the learned pieces.

A DATA directory holds one tokenizer file: `vocab.model` (SentencePiece, trained or --vocab) or
`tokenizer.json` (a Hugging Face `tokenizers` file, --tokenizer; hf_tokenizer.py).
`open_data_tokenizer(DATA)` loads whichever meta.json names, checked against `tokenizer_sha256`.
"""
from __future__ import annotations

import hashlib
import heapq
import io
import os
import re
import tempfile
from typing import Iterable, Iterator, Sequence

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

from scone_jax.data import hf_tokenizer, shards
from scone_jax.errors import UserError
from scone_jax.integrity import file_sha256  # noqa: F401  (also used as tokenizer.file_sha256)

PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3
SPM_FILE = "vocab.model"
SPM_KIND = "sentencepiece"
MODEL_TYPES = ("bpe", "unigram")
MAX_CHUNK_CHARS = 4096  # one training "sentence": whole lines, at most this many characters
_ESCAPE = "E000"
_NORMALIZE_TSV = f"2581\t{_ESCAPE} 31\n{_ESCAPE}\t{_ESCAPE} 32\n"
_DENORMALIZE_TSV = f"{_ESCAPE} 31\t2581\n{_ESCAPE} 32\t{_ESCAPE}\n"


def stable_fraction(*parts: str) -> float:
  """A number in [0, 1) that depends only on `parts`: sha256, not Python's salted hash()."""
  digest = hashlib.sha256("\0".join(parts).encode("utf-8", "surrogatepass")).digest()
  return int.from_bytes(digest[:8], "little") / 2.0**64


def training_chunks(text: str, max_chars: int = MAX_CHUNK_CHARS) -> Iterator[str]:
  """Cuts a document into line-aligned pieces of at most `max_chars` characters.

  Newlines stay inside the chunks, so the tokenizer learns pieces such as ":\\n"; a line
  longer than `max_chars` is cut into `max_chars` slices.
  """
  chunk: list[str] = []
  size = 0
  for line in text.splitlines(keepends=True):
    if size + len(line) > max_chars and chunk:
      yield "".join(chunk)
      chunk, size = [], 0
    while len(line) > max_chars:
      yield line[:max_chars]
      line = line[max_chars:]
    chunk.append(line)
    size += len(line)
  if chunk:
    yield "".join(chunk)


class TrainingSample:
  """A bounded, deterministic sample of training chunks (a bottom-k sketch by content hash).

  Keeps the chunks with the smallest `stable_fraction(chunk)` whose total size stays within
  `max_chars`; the result depends on the set of chunks seen, not on memory or timing.
  """

  def __init__(self, max_chars: int):
    self.max_chars = max_chars
    self._heap: list[tuple[float, str]] = []  # (-priority, chunk): a max-heap on priority
    self._chars = 0
    self.dropped = False  # True once some text did not fit: the sample is not the whole split

  def add_document(self, text: str) -> None:
    for chunk in training_chunks(text):
      priority = stable_fraction(chunk)
      if self._chars + len(chunk) > self.max_chars and self._heap and -self._heap[0][0] <= priority:
        self.dropped = True  # would be evicted at once
        continue
      heapq.heappush(self._heap, (-priority, chunk))
      self._chars += len(chunk)
      while self._chars > self.max_chars and len(self._heap) > 1:
        self._chars -= len(heapq.heappop(self._heap)[1])
        self.dropped = True

  @property
  def num_chars(self) -> int:
    return self._chars

  def sentences(self) -> list[str]:
    """The kept chunks in priority order (a fixed order, so training is reproducible)."""
    return [chunk for _, chunk in sorted(self._heap, key=lambda item: (-item[0], item[1]))]


_TOO_LARGE = re.compile(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)")
_TOO_SMALL = re.compile(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)")


def train(sentences: Sequence[str], out_path: str, vocab_size: int, model_type: str = "bpe",
          num_threads: int | None = None, sampled: bool = False) -> None:
  """Trains a lossless SentencePiece model on `sentences` and writes it to `out_path`.

  Raises UserError when `vocab_size` does not fit the corpus (SentencePiece's own check);
  `sampled` says the sentences are a sample of a larger text (the message then says so).
  Deterministic: same sentences, same arguments -> byte-identical model file.
  """
  if model_type not in MODEL_TYPES:
    raise UserError(f"--model_type {model_type!r} is not one of {', '.join(MODEL_TYPES)}")
  if not sentences:
    raise UserError("no training text for the tokenizer: the train split is empty")
  model = io.BytesIO()
  with tempfile.TemporaryDirectory(prefix="scone_jax_spm_") as rules_dir:
    norm_tsv = os.path.join(rules_dir, "normalize.tsv")
    denorm_tsv = os.path.join(rules_dir, "denormalize.tsv")
    with open(norm_tsv, "w") as f:
      f.write(_NORMALIZE_TSV)
    with open(denorm_tsv, "w") as f:
      f.write(_DENORMALIZE_TSV)
    spm.set_random_generator_seed(0)
    try:
      spm.SentencePieceTrainer.train(
          sentence_iterator=iter(sentences), model_writer=model,
          vocab_size=vocab_size, model_type=model_type,
          normalization_rule_tsv=norm_tsv, denormalization_rule_tsv=denorm_tsv,
          add_dummy_prefix=False, remove_extra_whitespaces=False,
          byte_fallback=True, allow_whitespace_only_pieces=True, split_digits=False,
          character_coverage=0.9995, max_sentence_length=4 * MAX_CHUNK_CHARS + 16,
          input_sentence_size=0, shuffle_input_sentence=False,  # we sampled already
          pad_id=PAD_ID, eos_id=EOS_ID, bos_id=BOS_ID, unk_id=UNK_ID,
          num_threads=num_threads or min(os.cpu_count() or 1, 16), minloglevel=2)
    except RuntimeError as e:
      raise _vocab_size_error(str(e), vocab_size, sampled) from e
  with open(out_path, "wb") as f:
    f.write(_without_rule_paths(model.getvalue()))


def _without_rule_paths(blob: bytes) -> bytes:
  """The model with the temporary rule-file paths blanked: they are compiled into the
  charsmaps already, and a path that differs per run would make the file non-reproducible."""
  proto = sentencepiece_model_pb2.ModelProto()
  proto.ParseFromString(blob)
  proto.normalizer_spec.normalization_rule_tsv = ""
  proto.denormalizer_spec.normalization_rule_tsv = ""
  return proto.SerializeToString(deterministic=True)


def _vocab_size_error(message: str, vocab_size: int, sampled: bool) -> Exception:
  if m := _TOO_LARGE.search(message):
    more = " or a larger --tokenizer_sample_chars" if sampled else ""
    return UserError(f"--vocab_size {vocab_size} is too large for this corpus: "
                     f"it supports at most {m.group(2)}; pass a smaller --vocab_size{more}")
  if m := _TOO_SMALL.search(message):
    return UserError(f"--vocab_size {vocab_size} is too small for this corpus: it needs at least "
                     f"{m.group(2)} pieces (special ids, 256 bytes and every common character)")
  first_line = message.strip().splitlines()[0] if message.strip() else "unknown error"
  return UserError(f"SentencePiece training failed with --vocab_size {vocab_size}: {first_line}")


class Tokenizer:
  """A loaded SentencePiece model; ids are Python ints, texts are str."""
  kind = SPM_KIND
  file_name = SPM_FILE

  def __init__(self, path: str, flag: str = "tokenizer"):
    """`flag` names the path in error messages (e.g. "--vocab")."""
    if not os.path.isfile(path):
      raise UserError(f"{flag} {path!r} does not exist; pass a SentencePiece .model file")
    with open(path, "rb") as f:
      blob = f.read()
    processor = spm.SentencePieceProcessor()
    try:
      processor.LoadFromSerializedProto(blob)
      valid = processor.get_piece_size() > 0
    except (RuntimeError, OSError, TypeError):
      valid = False
    if not valid:
      hint = " (a Hugging Face tokenizer.json goes to --tokenizer)" if flag == "--vocab" and _is_json(path) else ""
      raise UserError(f"{flag} {path!r} is not a SentencePiece model file{hint}; pass a .model file "
                      "written by SentencePiece")
    self.path = path
    self.sha256 = hashlib.sha256(blob).hexdigest()
    self._processor = processor

  @property
  def vocab_size(self) -> int:
    return self._processor.get_piece_size()

  @property
  def special_ids(self) -> dict[str, int]:
    """pad/eos/bos/unk ids as the model defines them (-1 = none)."""
    p = self._processor
    return {"pad_id": p.pad_id(), "eos_id": p.eos_id(), "bos_id": p.bos_id(), "unk_id": p.unk_id()}

  def encode(self, text: str) -> list[int]:
    """One document -> its token ids (no BOS/EOS)."""
    return self._processor.encode(text)

  def encode_batch(self, texts: Sequence[str], num_threads: int = -1) -> list[list[int]]:
    """Many documents at once, on `num_threads` threads (-1 = all cores)."""
    return self._processor.encode(list(texts), num_threads=num_threads)

  def decode(self, ids: Iterable[int]) -> str:
    return self._processor.decode([int(i) for i in ids])

  def decode_batch(self, batch: Sequence[Sequence[int]], num_threads: int = -1) -> list[str]:
    return self._processor.decode([[int(i) for i in ids] for ids in batch], num_threads=num_threads)

  def id_to_piece(self, i: int) -> str | None:
    return self._processor.id_to_piece(int(i)) if 0 <= int(i) < self.vocab_size else None


def _is_json(path: str) -> bool:
  return hf_tokenizer.looks_like_json(path)


def load(path: str, flag: str = "tokenizer", num_threads: int | None = None):
  """The tokenizer in `path`: a Hugging Face tokenizer.json (hf_tokenizer.HFTokenizer) when the
  file is JSON, else a SentencePiece model (Tokenizer)."""
  if _is_json(path):
    return hf_tokenizer.HFTokenizer(path, flag=flag, num_threads=num_threads)
  return Tokenizer(path, flag=flag)


def load_kind(kind: str, path: str, flag: str = "tokenizer", num_threads: int | None = None):
  """The tokenizer of a known kind (SPM_KIND or hf_tokenizer.KIND) in `path`."""
  if kind == hf_tokenizer.KIND:
    return hf_tokenizer.HFTokenizer(path, flag=flag, num_threads=num_threads)
  if kind == SPM_KIND:
    return Tokenizer(path, flag=flag)
  raise UserError(f"{flag}: unknown tokenizer kind {kind!r}; re-run `scone-jax prepare`")


def data_tokenizer_file(data_dir: str) -> tuple[str, str]:
  """(kind, path) of DATA's tokenizer file, as meta.json's `extra.tokenizer.kind` says (absent: a
  SentencePiece vocab.model, as every DATA written before Hugging Face tokenizers)."""
  meta = shards.load_meta(data_dir)
  info = meta.extra.get("tokenizer") if isinstance(meta.extra.get("tokenizer"), dict) else {}
  kind = info.get("kind", SPM_KIND)
  name = {SPM_KIND: SPM_FILE, hf_tokenizer.KIND: hf_tokenizer.FILE_NAME}.get(kind)
  if name is None:
    raise UserError(f"{data_dir}/meta.json names an unknown tokenizer kind {kind!r}; re-run `scone-jax prepare`")
  return kind, os.path.join(data_dir, name)


def open_data_tokenizer(data_dir: str):
  """DATA's tokenizer (SentencePiece or Hugging Face), refused unless its file is the one
  meta.json's `tokenizer_sha256` names."""
  kind, path = data_tokenizer_file(data_dir)
  if not os.path.isfile(path):
    raise UserError(f"{path!r} does not exist: the data directory is incomplete; re-run `scone-jax prepare`")
  tokenizer = load_kind(kind, path, flag=os.path.basename(path))
  recorded = shards.load_meta(data_dir).tokenizer_sha256
  if recorded and tokenizer.sha256 != recorded:
    raise UserError(f"{path!r} does not match tokenizer_sha256 in {data_dir}/meta.json (replaced or corrupted); "
                    "re-run `scone-jax prepare`")
  return tokenizer
