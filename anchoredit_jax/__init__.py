"""anchoredit_jax: AnchorEdit (autoregressive multi-turn image editing) in JAX/Flax.

The library never imports torch; PyTorch lives in `convert/` and in peer-parity tests only.
"""

__version__ = "0.1.0"
