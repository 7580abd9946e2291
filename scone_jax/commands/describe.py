"""`scone-jax describe`: an experiment's accounting (docs/METHODS.md 4) as JSON, without data.

The experiment is loaded the way `compile` sizes a run (train/aot.load_experiment): no DATA_DIR
or f-gram file is needed. ModelConfig.vocab_size comes from the model file (or from DATA_DIR's
meta.json where that exists on this host) and SCONE's K and |V_f| from FgramConfig.max_n and
FgramConfig.size (planned). The model is built abstractly (shapes only, nothing initialised).

One JSON object on stdout:
  accounting     the numbers `train` writes under `accounting` in RUN/summary.json: parameters
                 resident on the accelerator at inference, training-only (A_f), offloaded table
                 entries; FLOPs per token for inference and training (and the training-only part)
  main_params    the main model alone: the baseline model of this ModelConfig (blocks, token
                 table, position table, final norm, untied output layer)
  total_params   every parameter of the built model (resident + training-only + offloaded
                 parameters; SCONE's E_f is not a parameter)
  model, method  the resolved shapes (ModelConfig's fields; the method's own sizes)
  seq_len, hosts, batch_devices   what the FLOPs are counted at: the context, and the processes
                 and data-parallel devices that SCONE's planned A_f slots scale with (one and one,
                 or those of --topology with MeshConfig, as `compile` counts them)
  steps, tokens  TrainConfig.steps and the training tokens they read (steps x batch x seq_len)
  equal_flops    the FLOP-matched recipe (the paper's v3 setting): the baseline of this ModelConfig
                 (ModelConfig.embedding 'token', same run file) and its training FLOPs per token;
                 `steps` = the steps at which this experiment has used the training FLOPs the
                 baseline uses in TrainConfig.steps (floor(steps x baseline / this per token));
                 with SCONE, A_f's FLOPs are the planned ones (FgramConfig.max_unique distinct
                 f-grams per host batch), an upper bound of what a run needs (the train log
                 reports what it needed)
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math

import jax
from flax import nnx

from scone_jax import config as C, parallel
from scone_jax.config import bindings_from_flags
from scone_jax.models import build_model
from scone_jax.train import aot

ACCEPTS_EXTRA = True  # --gin.NAME=VALUE overrides

MODEL_FIELDS = ("vocab_size", "d_model", "num_layers", "num_heads", "num_kv_heads", "d_ff", "mlp", "norm", "bias",
                "positions", "max_seq_len", "tie_embeddings", "dtype", "embedding")


def add_arguments(p: argparse.ArgumentParser) -> None:
  p.epilog = "gin overrides: --gin.NAME=VALUE (e.g. --gin.FgramConfig.size=100000000), as for `scone-jax train`"
  C.add_gin_arguments(p)
  p.add_argument("--topology", default=None,
                 help="TPU slice the run will use (as for `compile`, e.g. v5p-256): hosts and data-parallel "
                      "devices for SCONE's planned A_f FLOPs (default: one host, one device)")


def _count(abstract_state) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(abstract_state))


def describe(gin_files: list[str], bindings: list[str], topology: str | None = None) -> dict:
  """The JSON object of the module docstring."""
  topo = aot.parse_topology(topology) if topology else None
  exp = aot.load_experiment(gin_files, bindings)
  hosts, batch_devices = 1, 1
  if topo is not None:   # as `compile`: hosts of the slice, data x fsdp of the mesh over its chips
    hosts = topo.chips // math.prod(topo.chips_per_host)
    sizes = parallel.resolve_mesh_shape(exp.mesh, topo.chips)
    batch_devices = sizes["data"] * sizes["fsdp"]
  _, params = nnx.split(nnx.eval_shape(exp.build_model), nnx.Param)
  acct = exp.accounting(params, hosts, batch_devices)
  baseline = dataclasses.replace(exp.model, embedding="token")
  _, main_params = nnx.split(nnx.eval_shape(lambda: build_model(baseline, exp.train.seed)), nnx.Param)
  model = {k: getattr(exp.model, k) for k in MODEL_FIELDS}
  model["head_dim"] = exp.model.resolved_head_dim
  base_exp = aot.load_experiment(gin_files, list(bindings) + ["ModelConfig.embedding = 'token'"])
  _, base_params = nnx.split(nnx.eval_shape(base_exp.build_model), nnx.Param)
  base_flops = base_exp.accounting(base_params, hosts, batch_devices).train_flops_per_token
  steps, tokens_per_step = exp.train.steps, exp.data.batch_size * exp.data.seq_len
  equal = {"baseline_train_flops_per_token": base_flops,
           "steps": int(steps * base_flops // acct.train_flops_per_token),
           "baseline_steps": steps}
  return {"gin_files": list(gin_files), "accounting": acct.as_dict(), "main_params": _count(main_params),
          "total_params": _count(params), "model": model, "method": exp.method.describe(),
          "seq_len": exp.data.seq_len, "hosts": hosts, "batch_devices": batch_devices,
          "steps": steps, "tokens": steps * tokens_per_step, "equal_flops": equal}


def run(args) -> int:
  print(json.dumps(describe(C.gin_files_of(args), bindings_from_flags(args.extra), args.topology), indent=1))
  return 0
