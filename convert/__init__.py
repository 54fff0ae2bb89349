"""Weights to and from PyTorch, and PyTorch serving of exported models (torch lives here, never in anchoredit_jax).

Scripts run as `python convert/<name>.py ...` or `python -m convert.<name> ...` from the repository root.
"""
