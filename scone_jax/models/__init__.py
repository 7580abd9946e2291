"""Models: decoder layers, the one block stack, the main LM, the decode KV cache, accounting.

The embedding methods (SCONE, LongCat hashed n-grams, STEM) live in scone_jax/methods/ and
attach their pieces through `build_model`."""
from scone_jax.models.transformer import BlockStack, Transformer, build_model

__all__ = ["BlockStack", "Transformer", "build_model"]
