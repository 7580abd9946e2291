"""Small shared test helpers: synthetic prepared data directories, tiny experiments, processes
run side by side, and a step-by-step decoding driver. (Brute-force references: tests/reference.py.)"""
from __future__ import annotations

import glob
import hashlib
import os

import numpy as np

from scone_jax.data import shards
from scone_jax.train import metrics

# The suite-wide tiny corpus, f-grams and SCONE run (fixtures in conftest.py).
WORDS = {"subject": ["the cat", "a dog", "my friend", "the old man", "a small bird", "the teacher"],
         "verb": ["sat on", "looked at", "ran to", "jumped over", "walked past", "painted"],
         "object": ["the mat", "the red house", "a big tree", "the river", "the garden wall", "a boat"]}
TINY_FGRAMS = 150          # |V_f| of the shared f-grams (K = 3)
TINY_ROWS_PER_SHARD = 64   # the shared store: 3 blocks, the last one partial
TINY_STEPS = 4             # the shared run: checkpoints at steps 2 and 4


def make_data(path: str, *, vocab: int = 64, docs: int = 120, val_docs: int = 12, min_len: int = 3,
              max_len: int = 60, seed: int = 0) -> tuple[str, dict[str, list[np.ndarray]]]:
  """A prepared DATA dir of learnable synthetic documents (arithmetic runs over the vocabulary).
  Returns (path, {split: documents in write order})."""
  os.makedirs(path, exist_ok=True)
  rng = np.random.default_rng(seed)
  written, counts = {}, {}
  for split, n in (("train", docs), ("validation", val_docs)):
    w = shards.ShardWriter(path, split, 2)
    written[split] = []
    for _ in range(n):
      length = int(rng.integers(min_len, max_len))
      doc = ((rng.integers(0, vocab) + rng.integers(1, 4) * np.arange(length)) % (vocab - 4) + 4).astype(np.int32)
      w.write(doc)
      written[split].append(doc)
    w.close()
    counts[split] = (w.num_documents, w.num_tokens)
  sha = {os.path.basename(p): hashlib.sha256(open(p, "rb").read()).hexdigest()
         for p in glob.glob(os.path.join(path, "*.array_record"))}
  shards.write_meta(path, shards.DataMeta(
      vocab_size=vocab, pad_id=0, eos_id=1, bos_id=2, unk_id=3, tokenizer_sha256="synthetic",
      num_documents={k: v[0] for k, v in counts.items()}, num_tokens={k: v[1] for k, v in counts.items()},
      num_shards={"train": 2, "validation": 2}, source="synthetic", extra={"shard_sha256": sha}))
  return path, written


def tiny_bindings(data_dir: str, steps: int, **extra) -> list[str]:
  b = [f"DATA_DIR = '{data_dir}'", f"TRAIN_STEPS = {steps}", "TrainConfig.log_every = 1",
       "TrainConfig.eval_batches = 2", "DataConfig.seq_len = 32", "DataConfig.batch_size = 8",
       "ModelConfig.d_model = 32", "ModelConfig.d_ff = 64"]
  b += [f"{k} = {v}" for k, v in extra.items()]
  return b


def read_metrics(workdir: str, split: str = "train") -> dict[int, dict]:
  """RUN/metrics.jsonl of one split by step (a step logged twice: its last record)."""
  return {r["step"]: r for r in metrics.read(workdir, split)}


# ---- processes ------------------------------------------------------------------------------------

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
  """A TCP port on loopback that nothing listens on now (for a jax.distributed coordinator)."""
  import socket
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run_all(jobs: list[tuple[list[str], int, str]], timeout_s: float = 150) -> None:
  """Runs (command, local CPU devices, log file) jobs side by side in the repository root; all
  must exit 0 within timeout_s. On a failure or the timeout every job still running is killed."""
  import subprocess
  import time

  import pytest

  from scone_jax import parallel
  procs = []
  try:
    for cmd, devices, log in jobs:
      env = {**os.environ, "XLA_FLAGS": parallel.fake_cpu_devices_flags(devices),
             "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}
      out = open(log, "w")
      procs.append((subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT), out, log))
    deadline = time.monotonic() + timeout_s
    while True:
      for proc, _, log in procs:
        if proc.poll():   # a failed process leaves its peers waiting in a collective: stop now
          with open(log) as f:
            pytest.fail(f"{log}: exited {proc.returncode}:\n{f.read()[-3000:]}")
      if all(proc.poll() == 0 for proc, _, _ in procs):
        return
      if time.monotonic() > deadline:
        pytest.fail(f"the jobs did not finish in {timeout_s} s; logs in {os.path.dirname(jobs[0][2])}")
      time.sleep(0.5)
  finally:
    for proc, out, _ in procs:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
      out.close()


# ---- decoding -------------------------------------------------------------------------------------

def stepwise_logits(decoder, seqs, prompt_lens, steps: int) -> dict[tuple[int, int], np.ndarray]:
  """Drives a scone_jax.serve.decode.Decoder: prefill the first prompt_lens tokens of each
  sequence ([BOS] + seq), then feed the rest one token a step (teacher forcing), checking that
  every step donates the KV cache. Returns {(row, position): logits [V]} for every position a
  real token was predicted from."""
  b = len(seqs)
  inputs = [np.concatenate([[2], s]).astype(np.int32) for s in seqs]
  padded = np.zeros((b, max(prompt_lens)), np.int32)
  for i, x in enumerate(inputs):
    padded[i, :prompt_lens[i]] = x[:prompt_lens[i]]
  _, logits, cache = decoder.prefill(padded, np.array(prompt_lens), max(prompt_lens) + steps)
  got = {(i, prompt_lens[i] - 1): np.asarray(logits)[i] for i in range(b)}
  h = decoder.features.history_len
  for t in range(steps):
    pos = [min(prompt_lens[i] + t, len(inputs[i]) - 1) for i in range(b)]
    tokens = np.array([inputs[i][p] for i, p in enumerate(pos)], np.int32)
    history = np.full((b, h), -1, np.int64)
    for i, p in enumerate(pos):
      tail = inputs[i][max(0, p - h + 1):p + 1]
      history[i, h - len(tail):] = tail
    old = cache
    _, logits, cache = decoder.step(cache, tokens, decoder.features.step(history).result(), t)
    assert old.k.is_deleted()   # decode_step donates the cache
    for i in range(b):
      if prompt_lens[i] + t < len(inputs[i]):
        got[(i, prompt_lens[i] + t)] = np.asarray(logits)[i]
  return got


# ---- fault injection ------------------------------------------------------------------------------

FAULT_SEED_ENV = "SCONE_FAULT_SEED"
DEFAULT_FAULT_SEED = 20260101


def fault_rng(what: str) -> tuple[np.random.Generator, str]:
  """The generator a fault-injection test draws its kill steps and kill times from, seeded by
  $SCONE_FAULT_SEED (default DEFAULT_FAULT_SEED), and a label naming the seed for assertion
  messages. The seed is printed (pytest -s shows it): `SCONE_FAULT_SEED=N pytest ...` replays a
  failure's schedule (times still race with the machine's speed; steps replay exactly)."""
  seed = int(os.environ.get(FAULT_SEED_ENV, DEFAULT_FAULT_SEED))
  label = f"{FAULT_SEED_ENV}={seed}"
  print(f"{what}: kill schedule drawn with {label}")
  return np.random.default_rng(seed), label


def fgram_batch(base: dict, grams: list[tuple[int, ...]], fgram_id: np.ndarray, max_n: int) -> dict:
  """A batch whose position (b, i) ends f-gram grams[fgram_id[b, i]] (-1: no match), in the form
  the pipeline gives DistinctFgrams: `match_len` and `history` (the K-1 inputs before each
  position), the last token written into `inputs`. The histories are synthetic (each position's
  own), which is all the dedup reads."""
  inputs = base["inputs"].copy()
  history = np.full(inputs.shape + (max_n - 1,), -1, np.int32)
  match_len = np.ones(inputs.shape, np.int32)
  for pos in zip(*np.nonzero(fgram_id >= 0)):
    g = grams[int(fgram_id[pos])]
    inputs[pos] = g[-1]
    history[pos][max_n - len(g):] = g[:-1]
    match_len[pos] = len(g)
  return {**base, "inputs": inputs, "history": history, "match_len": match_len}


def assert_prepare_refuses(tmp_path, capsys, cases: dict, out_of=None) -> None:
  """Every case {name: (argv, text the error must name)} makes `prepare` exit 2 with one line
  naming it, leaving no --out and no partial directory. out_of(name, index) picks --out."""
  import os

  from scone_jax import cli
  for index, (name, (argv, named)) in enumerate(cases.items()):
    out = out_of(name, index) if out_of else str(tmp_path / f"out_{index}")
    code = cli.main(["prepare", *argv, "--out", out])
    err = capsys.readouterr().err.strip()
    assert code == 2, name
    assert len(err.splitlines()) == 1 and err.startswith("scone-jax prepare: error:"), (name, err)
    assert named in err, (name, err)
    assert not os.path.exists(out), name
    assert not [n for n in os.listdir(tmp_path) if ".partial-" in n], name
