"""What an embedding method is: the interface every module of scone_jax/methods/ implements.

A method is resolved once per experiment (`Method.resolve`, against the model config and the
data's meta.json) and then answers every question the rest of the code has about it:
  build_model(seed)                 the main model with the method's modules attached
  row_features() / batch_features() host-side features of the grain pipeline (vectorised numpy)
  decode_features(store)            host-side features of each decode step (serve/decode.py)
  identity()                        hashes of the method's own inputs a run records (SCONE: FG)
  extra_flops()                     forward FLOPs per token the method adds to the main model
  training_only / offloaded         parameter groups of the accounting (docs/METHODS.md 4)
  describe()                        its resolved sizes (`scone-jax describe`)
  fgram_vocab                       the f-gram vocabulary of methods with an exportable f-gram
                                    table (SCONE), else None
Nothing outside scone_jax/methods/ asks for a method by name.

Decode features (the interface serve/decode.py drives):
  features.history_len          how many trailing tokens of each row `step` needs (>= 1)
  features.prompt(inputs_BxL, valid_BxL) -> Pending[dict]   for the right-padded prompts
  features.step(history_BxH) -> Pending[dict]               for the newest token of each row;
                                history [B, history_len], newest last, -1 before the document
Arrays keyed per position are [B, L, ...]; per-batch lists (keys starting `unique_`) have a
static length.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

from scone_jax.config import DataConfig, ModelConfig
from scone_jax.data.shards import DataMeta
from scone_jax.errors import UserError
from scone_jax.models.transformer import Transformer, build_model
from scone_jax.pending import Done


@dataclasses.dataclass
class Method:
  """A resolved embedding method. Subclasses add their config and what they resolved."""
  model: ModelConfig
  data: DataConfig

  name: ClassVar[str] = ""
  description: ClassVar[str] = ""        # in messages: "a baseline run", "a STEM run", ...
  training_only: ClassVar[tuple[str, ...]] = ()   # parameter path components dropped after export
  offloaded: ClassVar[tuple[str, ...]] = ()       # parameter path components that live off the accelerator
  # Whether serving (generate, decode) keeps the `offloaded` groups off the accelerator; False: the
  # accounting counts them resident (and reports them as offloadable only).
  served_offloaded: ClassVar[bool] = True

  @classmethod
  def resolve(cls, model: ModelConfig, data: DataConfig, meta: DataMeta, *, planned: bool = False) -> "Method":
    """The method of an experiment: its gin config built and checked against the data.
    planned: no data on this host (ahead-of-time compile); sizes come from the config."""
    return cls(model, data)

  # -- model ---------------------------------------------------------------------------------
  def input_embedding(self):
    """None, or a factory rngs -> module with `__call__(model, batch) -> [B, L, D]`."""
    return None

  def ffn_up(self):
    """None, or a factory rngs -> module with `up_fn(layer, batch)` (models/transformer.py)."""
    return None

  def build_model(self, seed: int) -> Transformer:
    self.model.validate()
    return build_model(self.model, seed, input_embedding=self.input_embedding(), ffn_up=self.ffn_up())

  # -- host-side features ----------------------------------------------------------------------
  def document_features(self, tagged: bool = True) -> tuple:
    """Callables document dict -> document dict, run on every whole document before it is
    packed into rows; each has `fields`, the per-input arrays it adds (data/pipeline.py).
    tagged: the documents come with the method's sidecar (False: other data than the run's)."""
    return ()

  def sidecar(self) -> tuple[str, str] | None:
    """(field, directory) of per-document values stored beside DATA's shards (SCONE's TAGS)."""
    return None

  def row_features(self) -> tuple:
    """Callables row dict -> row dict, run on every packed row."""
    return ()

  def batch_features(self, process_index: int = 0, batch_devices: int = 1, process_rows: int = 0,
                     store=None, sample=None) -> tuple:
    """Callables batch dict -> batch dict, run on every process batch. store: an opened table of
    precomputed rows (serve/store.py) to use in place of the training-only modules; sample: a
    callable n -> the pipeline's first n batches before batch features (to size static shapes
    from the data; None = size them without data). A feature may add `stat_*` keys: host-side
    numbers about the batch (never sent to the device; Trainer.global_batch drops them)."""
    if store is not None:
      raise self.no_store_error()
    return ()

  def decode_features(self, store=None):
    """The decode-step features (module docstring); store as for batch_features."""
    if store is not None:
      raise self.no_store_error()
    return TokenFeatures()

  def no_store_error(self, what: str = "this run") -> UserError:
    return UserError(f"{what} is {self.description} (ModelConfig.embedding={self.name!r}): it has no f-gram "
                     "store; drop --store or pass --store none")

  # -- identity --------------------------------------------------------------------------------
  def identity(self) -> dict[str, str]:
    """Hashes of the method's own inputs that a run records (train/identity.py)."""
    return {}

  def identity_sources(self) -> dict[str, str]:
    """Where each identity came from (paths, for messages)."""
    return {}

  def input_dirs(self) -> dict[str, str]:
    """The directories the method reads (name -> path): outputs must stay out of them."""
    return {}

  # -- accounting ------------------------------------------------------------------------------
  fgram_vocab = None

  def extra_flops(self) -> float:
    """Forward FLOPs per token that the method adds to (or, negative, removes from) the main
    model at inference; training counts 3x."""
    return 0.0

  def train_only_flops(self, process_count: int, batch_devices: int) -> float:
    """Training FLOPs per token of training-only modules (A_f), backward included (planned)."""
    return 0.0

  def train_only_flops_of(self, work, tokens: int) -> tuple[float, float] | None:
    """(needed, executed) training FLOPs per token of training-only modules, from the work the
    batch features measured (`stat_train_only_work`, summed over batches and processes) for
    `tokens` tokens; None = none measured."""
    return None

  def offloaded_entries(self, counted: int) -> int:
    """Offloaded table entries; `counted` = the parameters in `offloaded` groups."""
    return counted

  def describe(self) -> dict:
    """The method's own resolved sizes, for `scone-jax describe` (JSON values)."""
    return {"name": self.name}


class TokenFeatures:
  """Decode features of a model whose input is T[x] alone: nothing beyond the tokens."""
  history_len = 1

  def prompt(self, inputs_BxL, valid_BxL):
    return Done({})

  def step(self, history_BxH):
    return Done({})

