"""anchoredit_jax: AnchorEdit (autoregressive multi-turn image editing) in JAX/Flax.

The library never imports torch; PyTorch lives in `convert/` and in peer-parity tests only.
`from anchoredit_jax import Editor` is multi-turn editing from Python (edit_session.py); it is
imported on first use, so `import anchoredit_jax` alone stays light.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    if name in ("Editor", "EditState", "EditError"):
        from anchoredit_jax import edit_session
        return getattr(edit_session, name)
    raise AttributeError(f"module 'anchoredit_jax' has no attribute {name!r}")
