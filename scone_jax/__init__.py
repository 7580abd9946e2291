"""scone_jax: pretraining with scalable, offloaded n-gram embeddings in JAX/Flax NNX."""
__version__ = "0.1.0"
