"""Train state, its shardings, and the pure train/eval steps.

`TrainState` is a plain pytree of arrays (step, params as a pure dict, optax state): that is what
orbax checkpoints. The NNX module is rebuilt inside the step from the static graph definition.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from scone_jax import parallel
from scone_jax.config import ModelConfig, TrainConfig
from scone_jax.errors import UserError
from scone_jax.train.optimizer import make_optimizer


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: dict
  opt_state: Any


def _is_var(x) -> bool:
  return isinstance(x, nnx.Variable)


@dataclasses.dataclass
class Trainer:
  """Everything static about a run: graph, abstract params, optimizer, mesh and shardings."""
  model_cfg: ModelConfig
  train_cfg: TrainConfig
  mesh: Mesh
  build: Callable[[], nnx.Module]   # builds the model (used under eval_shape and jit only)

  def __post_init__(self):
    abstract = nnx.eval_shape(self.build)
    self.graphdef, self.abstract_params = nnx.split(abstract, nnx.Param)
    self.optimizer = make_optimizer(self.train_cfg, self.abstract_params)
    for path, var in jax.tree_util.tree_flatten_with_path(self.abstract_params, is_leaf=_is_var)[0]:
      name = "/".join(str(getattr(k, "key", k)) for k in path)
      parallel.check_divisible(var.shape, var.get_metadata()["logical_axes"], self.mesh, f"parameter {name}")
    self.param_shardings = nnx.to_pure_dict(jax.tree.map(
        lambda v: v.replace(NamedSharding(self.mesh, parallel.logical_to_spec(v.get_metadata()["logical_axes"]))),
        self.abstract_params, is_leaf=_is_var))
    replicated = NamedSharding(self.mesh, P())
    abstract_pure = nnx.to_pure_dict(self.abstract_params)
    opt_abstract = jax.eval_shape(self.optimizer.init, abstract_pure)
    opt_shardings = optax.tree_map_params(
        self.optimizer, lambda _, s: s, opt_abstract, self.param_shardings,
        transform_non_params=lambda _: replicated)
    self.state_shardings = TrainState(step=replicated, params=self.param_shardings, opt_state=opt_shardings)

  # -- model ---------------------------------------------------------------------------------
  def model(self, params: dict) -> nnx.Module:
    state = jax.tree.map(lambda v: v, self.abstract_params, is_leaf=_is_var)
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(self.graphdef, state)

  def abstract_state(self) -> TrainState:
    """ShapeDtypeStructs with shardings: the restore target for checkpoints."""
    shapes = jax.eval_shape(self._init)
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        shapes, self.state_shardings)

  def _init(self) -> TrainState:
    params = nnx.to_pure_dict(nnx.split(self.build(), nnx.Param)[1])
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=self.optimizer.init(params))

  def init(self) -> TrainState:
    """Fresh state, created already sharded (no host copy of the full model)."""
    with jax.set_mesh(self.mesh):
      return jax.jit(self._init, out_shardings=self.state_shardings)()

  # -- steps ---------------------------------------------------------------------------------
  def loss(self, params: dict, batch: dict) -> tuple[jax.Array, dict]:
    logits = self.model(params)(batch)
    weights = (batch["segment_ids"] > 0).astype(jnp.float32)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    total = jnp.sum(nll * weights)
    count = jnp.sum(weights)
    return total / jnp.maximum(count, 1.0), {"loss_sum": total, "tokens": count}

  def train_step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    (loss, aux), grads = jax.value_and_grad(self.loss, has_aux=True)(state.params, batch)
    updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "tokens": aux["tokens"]}
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  def eval_step(self, params: dict, batch: dict) -> dict:
    _, aux = self.loss(params, batch)
    return aux

  def batch_shardings(self, batch_shapes: dict) -> dict:
    """Rows over the batch axes; per-batch lists (`unique_*`) over the same devices."""
    return {k: NamedSharding(self.mesh, parallel.logical_to_spec(
        ("unique_fgrams" if k.startswith("unique_") else "batch",) + (None,) * (v.ndim - 1)))
        for k, v in batch_shapes.items() if not k.startswith("stat_")}

  @property
  def batch_devices(self) -> int:
    return self.mesh.shape["data"] * self.mesh.shape["fsdp"]

  def jit_train_step(self, batch_shapes: dict):
    replicated = NamedSharding(self.mesh, P())
    return jax.jit(self.train_step, in_shardings=(self.state_shardings, self.batch_shardings(batch_shapes)),
                   out_shardings=(self.state_shardings, replicated), donate_argnums=(0,))

  def jit_eval_step(self, batch_shapes: dict):
    replicated = NamedSharding(self.mesh, P())
    return jax.jit(self.eval_step, in_shardings=(self.param_shardings, self.batch_shardings(batch_shapes)),
                   out_shardings=replicated)

  def global_batch(self, local_batch: dict, global_rows: int) -> dict:
    """Assembles this process's rows into global arrays laid out over the batch axes."""
    out = {}
    shardings = self.batch_shardings(local_batch)
    for k, v in local_batch.items():
      if k.startswith("stat_"):   # host-side numbers about the batch (methods/base.py)
        continue
      if k.startswith("unique_"):   # per-batch lists (distinct f-grams): concatenated over processes
        shape = (v.shape[0] * jax.process_count(),) + v.shape[1:]
      else:
        shape = (global_rows,) + v.shape[1:]
      out[k] = jax.make_array_from_process_local_data(shardings[k], v, shape)
    return out


def make_trainer(exp, mesh: Mesh, num_hosts: int | None = None) -> Trainer:
  """The Trainer of an experiment on a mesh (the one place that builds one), after checking that
  the global batch splits over the mesh's batch devices and the hosts (default: this job's
  processes)."""
  hosts = jax.process_count() if num_hosts is None else num_hosts
  batch_devices = mesh.shape["data"] * mesh.shape["fsdp"]
  for rows, what in ((exp.data.batch_size, "batch_size"), (exp.data.eval_batch_size, "eval_batch_size")):
    if rows and (rows % batch_devices or rows % hosts):
      raise UserError(f"DataConfig.{what}={rows} is not divisible by the {batch_devices} data-parallel devices "
                      f"and {hosts} {'hosts' if num_hosts is not None else 'processes'} of the mesh")
  return Trainer(exp.model, exp.train, mesh, exp.build_model)
