"""scone_jax: pretraining with scalable, offloaded n-gram embeddings in JAX/Flax NNX."""
import glob as _glob
import os as _os

__version__ = "0.1.0"


def tpu_attached() -> bool:
  """TPU chips on this host (their device files), known without asking anything or importing jax."""
  return bool(_glob.glob("/dev/accel*") or _glob.glob("/dev/vfio/[0-9]*"))


def _default_platforms() -> None:
  # libtpu is installed everywhere (for AOT compilation against TPU topologies); on a host with no
  # TPU attached, JAX would still probe it and print pages of warnings. Pick the platforms that
  # exist unless the user chose.
  if "JAX_PLATFORMS" in _os.environ:
    return
  if tpu_attached():
    return
  _os.environ["JAX_PLATFORMS"] = "cuda,cpu" if _glob.glob("/dev/nvidia[0-9]*") else "cpu"


_default_platforms()


def __getattr__(name: str):
  # The Python API (scone_jax/api.py) is imported on first use: `import scone_jax` and the CLI's
  # start stay as light as before.
  if name in ("load", "Model"):
    import importlib
    return getattr(importlib.import_module("scone_jax.api"), name)
  raise AttributeError(f"module 'scone_jax' has no attribute {name!r}")
