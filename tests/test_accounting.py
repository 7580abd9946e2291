"""Accounting (docs/METHODS.md 4) of SCONE, LongCat and STEM experiments against numbers worked out
by hand: every experiment is built the way `train` builds it (gin files from experiments/ through
`experiment.load`, a synthetic DATA dir) and `Experiment.accounting` must give exactly the
parameter counts and FLOPs per token written out below, with their arithmetic.

The main model of every experiment here: models/tiny.gin with the bindings below, so
  d = 32, d_ff = 64, L = 2 layers (STEM: 3), n_q = 4 query heads, n_kv = 2 key/value heads,
  head width h = d / n_q = 8, |V| = 64 (tests.helpers.make_data), context c = seq_len = 32,
  B = 8 rows a global batch (B x c = 256 tokens).
One block's parameters:
  attention  wq d n_q h = 1,024 + wk d n_kv h = 512 + wv 512 + wo n_q h d = 1,024 = 3,072
  SwiGLU     w_gate + w_up + w_down = 3 d d_ff = 6,144
  norms      2 d = 64                                                   block = 9,280
One block's forward FLOPs per token (METHODS.md 4, a multiply-add = 2):
  2 (d h (2 n_q + 2 n_kv) + 3 d d_ff) + 4 c n_q h = 2 (3,072 + 6,144) + 4,096 = 22,528
Inference FLOPs of the baseline: L x 22,528 + 2 d |V| = 45,056 + 4,096 = 49,152; training 3x = 147,456.
"""
from __future__ import annotations

import pytest
from flax import nnx

from scone_jax import experiment
from scone_jax.fgram.build import build
from tests.helpers import make_data

SMALL = ["DataConfig.seq_len = 32", "DataConfig.batch_size = 8", "ModelConfig.d_model = 32", "ModelConfig.d_ff = 64"]


@pytest.fixture(scope="module")
def data_fg(tmp_path_factory):
  """A synthetic DATA dir (|V| = 64) and its f-grams (K = 3, 100 f-grams)."""
  root = tmp_path_factory.mktemp("acct")
  data, _ = make_data(str(root / "data"))
  vocab = build(data, str(root / "fg"), max_n=3, size=100, min_count=2)
  assert (len(vocab), vocab.meta.max_n) == (100, 3)
  return data, str(root / "fg")


def _load(data: str, method_gin: str, bindings: list[str]) -> experiment.Experiment:
  exp = experiment.load(["models/tiny.gin", method_gin, "runs/cpu.gin"], [f"DATA_DIR = '{data}'", *SMALL, *bindings])
  assert (exp.model.vocab_size, exp.data.seq_len, exp.data.batch_size, exp.model.d_model) == (64, 32, 8, 32)
  return exp


def _accounting(exp: experiment.Experiment, process_count: int = 1, batch_devices: int = 1):
  """As `train` computes it: the abstract parameters of the experiment's model."""
  _, abstract_params = nnx.split(nnx.eval_shape(exp.build_model), nnx.Param)
  return exp.accounting(abstract_params, process_count, batch_devices)


def test_scone_experiment_accounting(data_fg):
  data, fg = data_fg
  # SCONE with an untied output layer, |V_f| = 90 of the file's 100 f-grams (K = 3), and an A_f
  # narrower than the main model: L_f = 1 block at d_f = 16, 2 heads (h_f = 8), 1 kv head,
  # d_ff_f = 48, so the d -> d_f and d_f -> d projections exist.
  fgram = ["ModelConfig.tie_embeddings = False", f"FGRAM_DIR = '{fg}'", "FgramConfig.size = 90",
           "FgramConfig.num_layers = 1", "FgramConfig.d_model = 16", "FgramConfig.num_heads = 2",
           "FgramConfig.num_kv_heads = 1", "FgramConfig.d_ff = 48"]
  exp = _load(data, "methods/scone.gin", fgram)
  assert (exp.method.max_n, exp.method.num_fgrams) == (3, 90)
  acct = _accounting(exp)
  # Resident: 2 blocks 2 x 9,280 = 18,560 + T |V| d = 2,048 + unembed d |V| = 2,048 + final norm 32.
  assert acct.resident_params == 22_688
  # Training-only, A_f: one block at d_f = 16: wq 16*2*8 = 256 + wk 16*1*8 = 128 + wv 128 + wo 256
  # = 768, SwiGLU 3*16*48 = 2,304, norms 2*16 = 32: 3,104; in_proj d d_f = 512 + out_proj 512;
  # positions K d_f = 48; final norm 16. 3,104 + 1,024 + 48 + 16 = 4,192.
  assert acct.training_params == 4_192
  # Offloaded: E_f's rows, |V_f| d = 90 * 32 (not a parameter: nothing counted above).
  assert acct.offloaded_entries == 2_880
  # Inference: the baseline's 49,152 (E_f rows are reads).
  assert acct.inference_flops_per_token == 49_152
  # Training: 3 x 49,152 = 147,456 plus A_f's 3 x U_all x F_Af / (B c), where per f-gram
  #   F_blocks^{A_f}(K = 3) = 2 (d_f h_f (2*2 + 2*1) + 3 d_f d_ff_f) + 4 K 2 h_f
  #                         = 2 (768 + 2,304) + 192 = 6,336 for its one block,
  #   F_Af = K x 6,336 + 2 K d d_f (in_proj at K positions) + 2 d_f d (out_proj at the last)
  #        = 19,008 + 3,072 + 1,024 = 23,104;  3 F_Af = 69,312.
  # U_all (the A_f slots of a global batch, FgramConfig.max_unique = 0: the never-overflowing
  # bound min(tokens per process batch, |V_f|) rounded up to a multiple of the batch devices, x
  # processes):
  #   1 process, 1 device:   min(8*32, 90) = 90                 -> 69,312 * 90 / 256 = 24,367.5
  assert acct.train_flops_per_token == 147_456 + 24_367.5
  #   2 processes, 4 devices: min(4*32, 90) = 90 -> 92; x 2 = 184 -> 69,312 * 184 / 256 = 49,818
  assert _accounting(exp, 2, 4).train_flops_per_token == 147_456 + 49_818
  #   4 processes, 4 devices: min(2*32, 90) = 64; x 4 = 256    -> 69,312 * 256 / 256 = 69,312
  assert _accounting(exp, 4, 4).train_flops_per_token == 147_456 + 69_312
  # The process count and the devices change only A_f's slots, nothing else.
  assert _accounting(exp, 4, 4).inference_flops_per_token == 49_152
  # An explicit bound FgramConfig.max_unique = 20 on 8 batch devices: 20 -> 24 slots
  #   -> 69,312 * 24 / 256 = 6,498.
  exp = _load(data, "methods/scone.gin", fgram + ["FgramConfig.max_unique = 20"])
  assert _accounting(exp, 1, 8).train_flops_per_token == 147_456 + 6_498
  # Measured work (the train loop's MFU): per token slot the block 6,336 + in_proj 2 d d_f = 1,024,
  # per f-gram out_proj 2 d_f d = 1,024. 10 needed / 16 executed slots, 4 needed f-grams / 8 list
  # entries, over 256 tokens: needed 3 (10 x 7,360 + 4 x 1,024) / 256 = 910.5, executed
  # 3 (16 x 7,360 + 8 x 1,024) / 256 = 1,476.
  assert exp.method.train_only_flops_of((10, 16, 4, 8), 256) == (910.5, 1476.0)


def test_ngram_hash_experiment_accounting(data_fg):
  data, _ = data_fg
  # methods/ngram.gin: orders 2..3 (N = 3), 4 tables each: 8 tables of width d_sub = d / 8 = 4;
  # sizes by the released rule m + 2t + 1, m = round(4.5 |V|) = 288: 289, 291, ..., 303, summing
  # to 8 * 288 + (1 + 3 + ... + 15) = 2,304 + 64 = 2,368 rows, padded to ROW_ALIGN 1,024: 3,072.
  # tiny.gin ties the output layer to T.
  exp = _load(data, "methods/ngram.gin", [])
  assert exp.method.layout.sizes == tuple(range(289, 304, 2))
  acct = _accounting(exp)
  # Resident: 2 blocks 18,560 + T 2,048 + final norm 32 + the projections W_t 8 * 4 * 32 = 1,024
  # = 21,664, plus the fused table, which generate serves from the device (served_offloaded False):
  # its padding rows included, 3,072 * 4 = 12,288, offloadable but not offloaded.
  assert acct.resident_params == 21_664 + 12_288
  assert acct.training_params == 0
  assert (acct.offloaded_entries, acct.offloadable_entries) == (0, 12_288)
  assert "12,288 table entries could be offloaded" in acct.lines()[2]
  # Inference: 49,152 + the projections 2 T d_sub d = 2 * 8 * 4 * 32 = 2,048 (the gathers are free).
  assert acct.inference_flops_per_token == 51_200
  assert acct.train_flops_per_token == 3 * 51_200 == 153_600
  assert _accounting(exp, 2, 4) == acct


def test_stem_experiment_accounting(data_fg):
  data, _ = data_fg
  # methods/stem.gin (a third of the layers) on L = 3: round(3 / 3) = 1 STEM layer, layer 1.
  # tiny.gin ties the output layer to T.
  exp = _load(data, "methods/stem.gin", ["ModelConfig.num_layers = 3"])
  assert exp.method.layers == (1,)
  acct = _accounting(exp)
  # Resident: 3 blocks without W_up 3 * (9,280 - d d_ff = 2,048) = 21,696 + W_up of the 2 dense
  # layers 2 * 2,048 = 4,096 + T 2,048 + final norm 32.
  # Plus one table |V| d_ff = 64 * 64 = 4,096, offloadable but served from the device by generate.
  assert acct.resident_params == 27_872 + 4_096
  assert acct.training_params == 0
  assert (acct.offloaded_entries, acct.offloadable_entries) == (0, 4_096)
  # Inference: 3 x 22,528 + 2 d |V| 4,096 - the STEM layer's up-projection 2 d d_ff 4,096 = 67,584.
  assert acct.inference_flops_per_token == 67_584
  assert acct.train_flops_per_token == 3 * 67_584 == 202_752
  assert _accounting(exp, 2, 4) == acct
