"""A Hugging Face `tokenizers` tokenizer file (tokenizer.json: GPT-2, GPT-NeoX, Llama, ...) with the
interface of tokenizer.Tokenizer, so that prepare, decode and the seqio task use either.

How it encodes a document (the shards hold documents without BOS/EOS; the pipeline adds them):
  - no post-processor specials (`add_special_tokens=False`), no padding, no truncation (a
    tokenizer.json saved with `max_length` must not cut documents);
  - special tokens in the text are plain text (`encode_special_tokens`): a document that contains
    "<|endoftext|>" gets the pieces of that string, never the end-of-text id (as SentencePiece
    treats control symbols in its input);
  - decoding drops special tokens (as SentencePiece drops control ids).
Byte-level BPE (GPT-2, GPT-NeoX) is lossless under these rules; prepare checks every document.

Special ids come from the file: BOS and EOS from the post-processor's single-sequence template
when it has one (special tokens before / after the sequence), else by name among the added tokens
(`<|endoftext|>`, `</s>`, ...); no BOS of its own = the EOS (GPT-2: bos = eos = `<|endoftext|>`);
pad by name; unk from the model (`unk_token` / `unk_id`). A role the tokenizer lacks, or one that
would share an id with another (other than bos = eos), is -1, as meta.json allows.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Iterable, Sequence

from scone_jax.errors import UserError

FILE_NAME = "tokenizer.json"
KIND = "huggingface"
EOS_NAMES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eos|>", "<|end|>")
BOS_NAMES = ("<|begin_of_text|>", "<|startoftext|>", "<s>", "<bos>", "<|bos|>")
PAD_NAMES = ("<|padding|>", "<pad>", "<|pad|>", "[PAD]")


def looks_like_json(path: str) -> bool:
  """True when the file starts (after whitespace) with '{': a tokenizer.json, not a SentencePiece
  protobuf (whose first byte is a field tag, never '{')."""
  try:
    with open(path, "rb") as f:
      head = f.read(64)
  except OSError:
    return False
  return head.lstrip()[:1] == b"{"


def import_tokenizers():
  try:
    import tokenizers
  except ImportError as e:   # a core dependency; only a broken install gets here
    raise UserError("--tokenizer needs the tokenizers package: pip install tokenizers") from e
  return tokenizers


class HFTokenizer:
  """A loaded tokenizer.json; ids are Python ints, texts are str."""
  kind = KIND
  file_name = FILE_NAME

  def __init__(self, path: str, flag: str = "--tokenizer", num_threads: int | None = None):
    """`flag` names the path in error messages. `num_threads=1` encodes on one thread (a worker
    process of `prepare --workers`); None uses the library's thread pool."""
    if not os.path.isfile(path):
      raise UserError(f"{flag} {path!r} does not exist; pass a Hugging Face tokenizer.json file")
    with open(path, "rb") as f:
      blob = f.read()
    if num_threads == 1:
      os.environ["TOKENIZERS_PARALLELISM"] = "false"   # read when the first batch is encoded
    tokenizers = import_tokenizers()
    try:
      text = blob.decode("utf-8")
      config = json.loads(text)
      if not isinstance(config, dict):
        raise ValueError("not a JSON object")
      tokenizer = tokenizers.Tokenizer.from_str(text)
    except Exception as e:   # tokenizers raises plain Exception for a file it cannot read
      hint = (" (a SentencePiece model goes to --vocab)" if not looks_like_json(path) and flag == "--tokenizer"
              else "")
      why = " ".join(str(e).split())[:120] or type(e).__name__
      raise UserError(f"{flag} {path!r} is not a Hugging Face tokenizer file ({why}){hint}; "
                      "pass a tokenizer.json saved by the tokenizers library") from e
    tokenizer.no_padding()
    tokenizer.no_truncation()
    tokenizer.encode_special_tokens = True
    self.path = path
    self.sha256 = hashlib.sha256(blob).hexdigest()
    self._tokenizer = tokenizer
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    self._vocab_size = max(tokenizer.get_vocab_size(with_added_tokens=True), max(vocab.values(), default=-1) + 1)
    if self._vocab_size < 1:
      raise UserError(f"{flag} {path!r} has an empty vocabulary; pass a trained tokenizer.json")
    self.special_tokens = _special_tokens(tokenizer, config)
    if self.special_tokens["eos"] is None:
      raise UserError(f"{flag} {path!r} has no end-of-text token (looked for the post-processor's template and "
                      f"the added tokens {', '.join(EOS_NAMES)}); add one to the tokenizer")

  @property
  def vocab_size(self) -> int:
    return self._vocab_size

  @property
  def special_ids(self) -> dict[str, int]:
    """pad/eos/bos/unk ids (-1 = none); bos may equal eos."""
    ids = {role: (-1 if token is None else self._tokenizer.token_to_id(token))
           for role, token in self.special_tokens.items()}
    return {f"{role}_id": ids[role] for role in ("pad", "eos", "bos", "unk")}

  def encode(self, text: str) -> list[int]:
    """One document -> its token ids (no BOS/EOS)."""
    return self._tokenizer.encode(text, add_special_tokens=False).ids

  def encode_batch(self, texts: Sequence[str], num_threads: int = -1) -> list[list[int]]:
    del num_threads   # the library's own pool (TOKENIZERS_PARALLELISM)
    return [e.ids for e in self._tokenizer.encode_batch_fast(list(texts), add_special_tokens=False)]

  def decode(self, ids: Iterable[int]) -> str:
    return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

  def decode_batch(self, batch: Sequence[Sequence[int]], num_threads: int = -1) -> list[str]:
    del num_threads
    return self._tokenizer.decode_batch([[int(i) for i in ids] for ids in batch], skip_special_tokens=True)

  def id_to_piece(self, i: int) -> str | None:
    return self._tokenizer.id_to_token(int(i))


def _special_tokens(tokenizer, config: dict) -> dict[str, str | None]:
  """role -> token string (None = the tokenizer has none), distinct ids except bos = eos."""
  added = {t.content for t in tokenizer.get_added_tokens_decoder().values()}
  special = {t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special}

  def by_name(names):
    for pool in (special, added):
      for name in names:
        if name in pool:
          return name
    return None

  before, after = _template_specials(config.get("post_processor"))
  eos = after or by_name(EOS_NAMES)
  bos = before or by_name(BOS_NAMES) or eos
  pad = by_name(PAD_NAMES)
  unk = _model_unk(tokenizer, config.get("model") or {})
  roles = {"eos": eos, "bos": bos, "pad": pad, "unk": unk}
  ids = {r: (None if t is None else tokenizer.token_to_id(t)) for r, t in roles.items()}
  for role in list(roles):
    if ids[role] is None:
      roles[role] = None
  taken = {ids["eos"], ids["bos"]} - {None}
  for role in ("pad", "unk"):
    if ids[role] is not None and ids[role] in taken:
      roles[role] = None   # e.g. pad = eos: no id of its own
    elif ids[role] is not None:
      taken.add(ids[role])
  return roles


def _template_specials(processor) -> tuple[str | None, str | None]:
  """The special tokens a TemplateProcessing puts before and after a single sequence (the last
  before it, the first after it), looking inside a Sequence of processors."""
  if not isinstance(processor, dict):
    return None, None
  if processor.get("type") == "Sequence":
    for inner in processor.get("processors") or []:
      found = _template_specials(inner)
      if found != (None, None):
        return found
    return None, None
  if processor.get("type") != "TemplateProcessing":
    return None, None
  before = after = None
  seen_sequence = False
  for piece in processor.get("single") or []:
    if not isinstance(piece, dict):
      continue
    if "Sequence" in piece:
      seen_sequence = True
    elif "SpecialToken" in piece:
      name = (piece["SpecialToken"] or {}).get("id")
      if not seen_sequence:
        before = name
      elif after is None:
        after = name
  return before, after


def _model_unk(tokenizer, model: dict) -> str | None:
  if isinstance(model.get("unk_token"), str):
    return model["unk_token"]
  if isinstance(model.get("unk_id"), int):   # Unigram
    return tokenizer.id_to_token(model["unk_id"])
  return None
