"""Flax layers that read their stored weights directly when applied.

flax's `Module.param`, when the parameter exists, re-runs its initialiser under jax.eval_shape to
check the shape: once per parameter per trace. Every jitted step, sampler turn and evaluation
traces the DiT, the VAE, the text encoder (and, in evaluation, CLIP/DINO) again, so that check was
a third of the DiT's tracing time. These subclasses keep flax's path at init and otherwise read the
parameter as stored, checking its shape against the one the layer asks for (the same error flax raises).
"""
import flax
import flax.linen as nn
import numpy as np


class StoredParams:
    """Mixin for a flax module: flax's `param` at init, the stored value (shape checked) when applied.
    Measured (cProfile, 2-core CPU, 2026-12-06): tracing the DMD step of configs/dmd_shapes.py:test,
    53 s -> 28 s; a forward of the tiny test DiT, 31% of its tracing time was flax's eval_shape."""

    def param(self, name, init_fn, *init_args, unbox=True, **init_kwargs):
        if self.is_initializing() or not self.has_variable("params", name):
            return super().param(name, init_fn, *init_args, unbox=unbox, **init_kwargs)
        value = self.get_variable("params", name)
        plain = nn.meta.unbox(value)
        # every initialiser these layers use takes (key, shape, ...): the shape is the first argument
        want = init_args[0] if init_args and isinstance(init_args[0], (tuple, list)) else None
        if want is not None and tuple(np.shape(plain)) != tuple(want):
            raise flax.errors.ScopeParamShapeError(name, self.scope.path_text, np.shape(plain), tuple(want))
        return plain if unbox else value


class Dense(StoredParams, nn.Dense):
    pass


class LayerNorm(StoredParams, nn.LayerNorm):
    pass


class RMSNorm(StoredParams, nn.RMSNorm):
    pass


class Conv(StoredParams, nn.Conv):
    pass


class Embed(StoredParams, nn.Embed):
    pass
