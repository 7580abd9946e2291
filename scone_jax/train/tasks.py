"""Zero-shot multiple choice (`scone-jax eval --task mc:FILE.jsonl`; docs/METHODS.md 5).

A task file holds one JSON object per line (blank lines are skipped):
  {"context": str, "choices": [str, ...], "label": int}     ("gold" is accepted for "label")
Each choice is scored by the log-likelihood of its tokens given the context, as lm-eval-harness
scores `loglikelihood` requests: trailing whitespace of the context moves to the front of the
choice, whole = encode(context + choice), the choice's tokens are whole[len(encode(context)):].
The choice is appended to the context as it is written: a file carries its own separator, e.g.
choices " Paris" with a leading space (the harness's target_delimiter " ").
  acc        argmax of the summed log-likelihood is the label
  acc_norm   argmax of the log-likelihood / the choice's UTF-8 bytes is the label (the harness's
             acc_norm, in bytes)
Ties go to the first choice (numpy argmax, as the harness).

Scoring (`Scorer.score_sequences`) runs every sequence as one document, exactly as an eval batch: [BOS]
+ its tokens, the method's document features on the whole document (SCONE: the exact matcher and
the histories), one document per row, right-padded, then the method's row and batch features
(SCONE: the distinct f-grams, A_f's inputs or a store's rows); the model's own forward pass under
the run's mesh. Rows are the run's eval batch; their length is the first of 16, 32, 64, ... (at
most ModelConfig.max_seq_len) that holds the batch's longest, with sequences sorted longest first:
a few static shapes, one compile each. A sequence longer than the model keeps its last
max_seq_len - 1 tokens after the BOS (the harness's left truncation; counted as `truncated`); a
choice that alone does not fit is refused.
"""
from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from scone_jax.data import pipeline
from scone_jax.errors import UserError

FORMAT = '{"context": str, "choices": [str, ...], "label": int}'
MIN_LENGTH = 16   # the shortest row length bucket


@dataclasses.dataclass(frozen=True)
class Example:
  context: str
  choices: tuple[str, ...]
  label: int
  where: str   # "FILE:LINE", for messages


def _bad(where: str, what: str) -> UserError:
  return UserError(f"{where}: {what}; each line must be {FORMAT}")


def _text(value, where: str, what: str) -> str:
  if not isinstance(value, str):
    raise _bad(where, f"{what} is not a string")
  try:
    value.encode("utf-8")
  except UnicodeEncodeError as e:
    raise _bad(where, f"{what} is not valid UTF-8 text (at character {e.start})") from None
  return value


def read_mc(path: str) -> list[Example]:
  """Every example of a multiple-choice file, each line checked (a UserError names FILE:LINE)."""
  if not os.path.isfile(path):
    why = "is not a file" if os.path.exists(path) else "does not exist"
    raise UserError(f"--task mc:{path}: {path!r} {why}; pass a JSONL file whose lines are {FORMAT}")
  examples = []
  with open(path, "rb") as f:
    for number, raw in enumerate(f, 1):
      where = f"{path}:{number}"
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise _bad(where, f"is not UTF-8 (bad byte at offset {e.start})") from None
      if not line.strip():
        continue
      try:
        obj = json.loads(line)
      except json.JSONDecodeError as e:
        raise _bad(where, f"is not JSON ({e.msg})") from None
      if not isinstance(obj, dict):
        raise _bad(where, "is not a JSON object")
      if "context" not in obj:
        raise _bad(where, "has no field 'context'")
      context = _text(obj["context"], where, "'context'")
      choices = obj.get("choices")
      if not isinstance(choices, list) or len(choices) < 2:
        raise _bad(where, "'choices' is not a list of at least 2 strings")
      choices = tuple(_text(c, where, f"choice {j}") for j, c in enumerate(choices))
      for j, c in enumerate(choices):
        if not c:
          raise _bad(where, f"choice {j} is empty")
      if "label" in obj and "gold" in obj and obj["label"] != obj["gold"]:
        raise _bad(where, f"'label' {obj['label']!r} and 'gold' {obj['gold']!r} disagree")
      label = obj["label"] if "label" in obj else obj.get("gold")
      if isinstance(label, bool) or not isinstance(label, int):
        raise _bad(where, f"'label' {label!r} is not a whole number (the index of the right choice)")
      if not 0 <= label < len(choices):
        raise _bad(where, f"label {label} is out of range for its {len(choices)} choices (0..{len(choices) - 1})")
      examples.append(Example(context, choices, label, where))
  if not examples:
    raise UserError(f"--task mc:{path}: {path!r} holds no examples; pass a JSONL file whose lines are {FORMAT}")
  return examples


def encode_pairs(tokenizer, pairs: list[tuple[str, str]]) -> list[tuple[list[int], int]]:
  """(tokens of context + continuation, how many of them are the continuation's) for every
  (context, continuation), as lm-eval-harness's _encode_pair: trailing whitespace of the context
  moves onto the continuation; the continuation's tokens are those of the whole text past the
  context's own tokens."""
  contexts, wholes = [], []
  for context, continuation in pairs:
    spaces = len(context) - len(context.rstrip())
    if spaces:
      context, continuation = context[:-spaces], context[-spaces:] + continuation
    contexts.append(context)
    wholes.append(context + continuation)
  context_ids = tokenizer.encode_batch(contexts)
  whole_ids = tokenizer.encode_batch(wholes)
  return [(list(w), len(w) - min(len(c), len(w))) for c, w in zip(context_ids, whole_ids)]


def length_bucket(n: int, max_len: int) -> int:
  """The row length for a longest row of n inputs: the first of 16, 32, 64, ... that holds it,
  at most max_len."""
  length = MIN_LENGTH
  while length < n:
    length *= 2
  return min(length, max_len)


class _Rows:
  """One document per row, through the method's features as the eval pipeline runs them."""

  def __init__(self, exp):
    meta = exp.data_meta
    self.bos, self.eos = meta.bos_id, meta.eos_id
    # Not the run's own DATA: no sidecar (SCONE's TAGS); the matcher sees the whole document.
    self.document_features = exp.method.document_features(tagged=False)
    self.row_features = exp.method.row_features()

  def row(self, doc: np.ndarray, scored: int, length: int) -> dict:
    """[BOS] + doc as one segment of a row of `length`, and `score_mask`: 1 where the target is
    one of the last `scored` tokens of doc (never the EOS target)."""
    d = {"inputs": np.concatenate([[self.bos], doc]).astype(np.int32),
         "targets": np.concatenate([doc, [self.eos]]).astype(np.int32)}
    for fn in self.document_features:
      d = fn(d)
    n = len(d["inputs"])
    row = {}
    for k, v in d.items():
      out = np.zeros((length,) + v.shape[1:], v.dtype)
      out[:n] = v
      row[k] = out
    seg = np.zeros(length, np.int32)
    seg[:n] = 1
    row["segment_ids"] = seg
    row["positions"] = np.where(seg > 0, pipeline.segment_positions(seg), 0).astype(np.int32)
    for fn in self.row_features:
      row = fn(row)
    mask = np.zeros(length, np.float32)
    mask[n - 1 - scored:n - 1] = 1.0
    row["score_mask"] = mask
    return row


class Scorer:
  """Scores token sequences and multiple-choice examples with one run's parameters (and store):
  its jitted step is kept across calls, so every task of an eval compiles each shape once."""

  def __init__(self, exp, trainer, params, *, store=None):
    self.exp, self.trainer, self.params, self.store = exp, trainer, params, store
    self._rows = _Rows(exp)
    self._fn = None

  def _score(self, params, batch):
    batch = dict(batch)
    mask = batch.pop("score_mask")
    logits = self.trainer.model(params)(batch).astype(jnp.float32)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    return -jnp.sum(nll * mask, axis=-1)

  def score_sequences(self, docs: list, scored: list[int]) -> np.ndarray:
    """float64 [N]: the summed log-likelihood (nats) of the last scored[i] tokens of docs[i] given
    the tokens before them, each doc run as one document after a BOS (module docstring). Every
    doc fits the model (1 + len <= ModelConfig.max_seq_len) and 1 <= scored[i] <= len(docs[i])."""
    exp, trainer = self.exp, self.trainer
    max_len = exp.model.max_seq_len
    docs = [np.asarray(d, np.int32) for d in docs]
    for d, s in zip(docs, scored):
      assert 1 <= s <= len(d) and len(d) + 1 <= max_len, (len(d), s, max_len)   # the caller's checks
    out = np.zeros(len(docs), np.float64)
    if not docs:
      return out
    rows = exp.data.eval_batch_size or exp.data.batch_size   # global; make_trainer checked it splits
    process, per = jax.process_index(), rows // jax.process_count()
    order = sorted(range(len(docs)), key=lambda i: -len(docs[i]))   # longest first: few row lengths
    batches = [order[i:i + rows] for i in range(0, len(order), rows)]

    def local(b: int) -> dict:
      """This process's rows of global batch b before batch features; short batches padded with
      empty rows (segment 0: nothing attends to, matches or scores them)."""
      ids = batches[b]
      length = length_bucket(len(docs[ids[0]]) + 1, max_len)
      made = [self._rows.row(docs[i], scored[i], length) for i in ids[process * per:(process + 1) * per]]
      template = made[0] if made else self._rows.row(docs[ids[0]], 1, length)
      made += [{k: np.zeros_like(v) for k, v in template.items()}] * (per - len(made))
      return {k: np.stack([r[k] for r in made]) for k in made[0]}

    sampled: dict[int, dict] = {}

    def sample(n: int) -> list[dict]:   # what the batch features size their static shapes from
      for b in range(min(n, len(batches))):
        sampled.setdefault(b, local(b))
      return [sampled[b] for b in range(min(n, len(batches)))]

    features = exp.method.batch_features(process, trainer.batch_devices, per, store=self.store, sample=sample)
    pending = None
    with jax.set_mesh(trainer.mesh):
      for b in range(len(batches)):
        batch = sampled.pop(b) if b in sampled else local(b)
        for f in features:
          batch = f(batch)
        if self._fn is None:
          self._fn = jax.jit(self._score, in_shardings=(trainer.param_shardings, trainer.batch_shardings(batch)),
                             out_shardings=NamedSharding(trainer.mesh, P()))
        result = self._fn(self.params, trainer.global_batch(batch, rows))   # the next batch is built meanwhile
        if pending is not None:
          _collect(out, *pending)
        pending = (batches[b], result)
      _collect(out, *pending)
    return out

  def score_mc(self, tokenizer, examples: list[Example]) -> dict:
    """{"examples", "acc", "acc_norm", "truncated"} and per example "loglikelihoods" (per
    choice, nats) and "tokens" (each choice's scored tokens). A context + choice longer than the
    model keeps its last max_seq_len - 1 tokens; a choice that alone does not fit is refused."""
    exp = self.exp
    max_doc = exp.model.max_seq_len - 1   # + the BOS
    encoded = encode_pairs(tokenizer, [(ex.context, choice) for ex in examples for choice in ex.choices])
    docs, scored, truncated = [], [], set()
    k = 0
    for e, ex in enumerate(examples):
      for j in range(len(ex.choices)):
        whole, n = encoded[k]
        k += 1
        if n == 0:
          raise UserError(f"{ex.where}: choice {j} adds no token to the context (the tokenizer merges it into "
                          "the context's last token); give the choice its leading separator, e.g. a space")
        if n > max_doc:
          raise UserError(f"{ex.where}: choice {j} is {n} tokens, more than the model's context holds after the "
                          f"BOS (ModelConfig.max_seq_len={exp.model.max_seq_len}); shorten it")
        if len(whole) > max_doc:
          whole = whole[-max_doc:]
          truncated.add(e)
        docs.append(whole)
        scored.append(n)
    lls = self.score_sequences(docs, scored)
    per_example, per_tokens, correct, correct_norm = [], [], 0, 0
    k = 0
    for ex in examples:
      c = len(ex.choices)
      ll = lls[k:k + c]
      per_example.append([float(x) for x in ll])
      per_tokens.append(scored[k:k + c])
      k += c
      lengths = np.array([len(choice.encode("utf-8")) for choice in ex.choices], np.float64)
      correct += int(np.argmax(ll)) == ex.label
      correct_norm += int(np.argmax(ll / lengths)) == ex.label
    n = len(examples)
    return {"examples": n, "acc": correct / n, "acc_norm": correct_norm / n, "truncated": len(truncated),
            "loglikelihoods": per_example, "tokens": per_tokens}


def _collect(out: np.ndarray, ids: list[int], result) -> None:
  values = np.asarray(jax.device_get(result), np.float64)
  out[ids] = values[:len(ids)]
