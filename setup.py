"""scone_jax: SCONE-style embedding scaling for JAX/Flax language-model pretraining."""
import re

from setuptools import find_packages, setup

with open("scone_jax/__init__.py") as f:
  VERSION = re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)

setup(
    name="scone_jax",
    version=VERSION,
    description="Pretraining with scalable, offloaded n-gram embeddings (SCONE, LongCat, STEM) in JAX/Flax NNX",
    # launch/: the TPU/xpk/SLURM launchers, which `scone-jax sweep` drives (one code path per backend)
    packages=find_packages(include=["scone_jax", "scone_jax.*", "launch"]),
    # The experiment files (models/, methods/, runs/) ship in the wheel: `--gin_file runs/...` works
    # after a non-editable install, from any working directory (config.EXPERIMENTS_DIR).
    package_data={"scone_jax": ["experiments/*.md", "experiments/*/*.gin"]},
    python_requires=">=3.11",
    install_requires=[
        "jax>=0.10.2",
        "flax>=0.12.8",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8",
        "grain>=0.2.18",
        "array-record>=0.8.6",
        "tensorstore>=0.1.86",
        "gin-config>=0.5.0",
        # sentencepiece 0.2.2+ is generated with protobuf 7 gencode, while apache-beam and
        # tensorflow (through the seqio extra) need protobuf < 7: 0.2.1 + protobuf 6.33 coexist.
        "sentencepiece==0.2.1",
        "protobuf>=6.33,<7",
        "tokenizers>=0.20",   # prepare --tokenizer tokenizer.json (Hugging Face byte-level BPE: GPT-2, GPT-NeoX)
        "pyarrow>=20",
        "tensorboardX>=2.6",
        "rich>=13",
        "numpy>=2.0",
        "safetensors>=0.6",   # export --format safetensors (the main model and the f-gram table for other frameworks)
    ],
    extras_require={
        # the test extra includes the corpus readers' extras, so that `make install` tests them
        "test": ["pytest>=8", "pytest-xdist>=3.6", "hypothesis>=6.100", "zarr>=3.1", "ruff>=0.17",
                 "datasets>=3.0", "zstandard>=0.22", "gcsfs>=2026.9", "gcp-storage-emulator>=2026.7"],
        # figures: sweep, compare, bench lookup
        "plots": ["matplotlib>=3.8"],
        # prepare --input seqio:TASK and the `scone_jax_data` seqio task (TensorFlow: ~2 GB, so not in the base install)
        "seqio": ["seqio>=0.0.20"],
        # prepare --input hf:PATH[:SPLIT] (a Hugging Face datasets dataset: save_to_disk or the local cache)
        "hf": ["datasets>=3.0"],
        # prepare --input FILE.jsonl.zst
        "zstd": ["zstandard>=0.22"],
        # dask: the DaskRunner; google-apitools: without it every process that imports Beam logs a warning
        "beam": ["apache-beam>=2.77.0", "dask>=2024.4.2", "distributed>=2024.4.2", "google-apitools>=0.5.31"],
        # gs:// paths (fsspec's GCS filesystem; tensorstore and orbax speak gs:// themselves)
        "gcs": ["gcsfs>=2026.9"],
        "tpu": ["libtpu>=0.0.51"],
        "cuda": ["jax[cuda12]>=0.10.2"],
    },
    entry_points={"console_scripts": ["scone-jax=scone_jax.cli:main"]},
)
