"""Validation during training: a fixed held-out set, its loss, and preview images (PNG).

The held-out pairs come straight from ShapesEdit (split heldout_seeds, first turn) so that the
preview can print each instruction; the loss uses a fixed RNG so that values are comparable
across steps and the best checkpoint is chosen on it. val.metric picks that loss: "flow_loss"
(the stage-1 loss, held out) or "sample_mse" (latent MSE of the val sampler's output against the
target: what matters for a few-step distilled model, whose velocity is no longer a flow).
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from anchoredit_jax import sampler, stage1
from anchoredit_jax.data.contact_sheet import save_contact_sheet
from anchoredit_jax.data.shapes_edit import generate_sequence
from anchoredit_jax.data.images import to_float, to_uint8


class Stage1Validation:
    """`run(params, frozen, step, workdir, write)` -> {"val_loss": ...}; writes samples/step_N.png."""

    def __init__(self, config, enc, tokenize, model):
        self.config, self.enc, self.model = config, enc, model
        n, res = config.val.num_examples, config.data.resolution
        seqs = [generate_sequence(config.val.seed_offset + i, 1, res, split=config.val.split) for i in range(n)]
        self.instructions = [s.instructions[0] for s in seqs]
        ids, mask = tokenize(self.instructions)
        f = lambda a: to_float(np.asarray(a))  # noqa: E731
        self.batch = dict(source=f([s.source for s in seqs]), target=f([s.targets[0] for s in seqs]),
                          mask=np.asarray([s.masks[0] for s in seqs], np.float32), has_mask=np.ones(n, np.float32),
                          ids=np.asarray(ids), ids_mask=np.asarray(mask))
        self._loss = jax.jit(self._loss_impl)
        self._sample = jax.jit(self._sample_impl)

    def _prepare(self, frozen, b):
        enc = self.enc
        text, text_mask = enc.embed_text(frozen, b["ids"], b["ids_mask"])
        return (enc.encode_images(frozen, b["source"]), enc.encode_images(frozen, b["target"]), text, text_mask,
                enc.latent_mask(b["mask"]))

    def _loss_impl(self, params, frozen, b):
        src, tgt, text, text_mask, lmask = self._prepare(frozen, b)
        null_text, null_mask = self.enc.null_text()
        loss, _ = stage1.loss_fn(params, self.model, jax.random.PRNGKey(1234), source=src, target=tgt, text=text,
                                 text_mask=text_mask, null_text=null_text, null_mask=null_mask, edit_mask=lmask,
                                 has_mask=b["has_mask"], cfg=self.config.stage1)
        return loss

    def _sample_impl(self, params, frozen, b):
        """-> (decoded samples, latent MSE of the samples against the targets)."""
        src, tgt, text, text_mask, _ = self._prepare(frozen, b)
        n = src.shape[0]
        null_text, null_mask = self.enc.null_text((n,))
        # both branches in one batch: [cond; uncond]
        texts, masks = jnp.concatenate([text, null_text]), jnp.concatenate([text_mask, null_mask])
        src2 = jnp.concatenate([src, src])

        def v_fn(x, t):
            v = stage1.pair_velocity(params, self.model, src2, jnp.concatenate([x, x]), jnp.full(2 * n, t), texts,
                                     masks, null_text[0], null_mask[0])
            return v[:n], v[n:]

        cfg = self.config.val
        noise = jax.random.normal(jax.random.PRNGKey(7), src.shape)
        x0 = sampler.sample(sampler.guided(v_fn, cfg.guidance), noise, cfg.sample_steps, method=cfg.sampler,
                            shift=cfg.sample_shift, rng=jax.random.PRNGKey(8))
        return self.enc.decode_latents(frozen, x0), jnp.mean(jnp.square(x0 - tgt))

    def run(self, params, frozen, step: int, workdir: str, write: bool) -> dict:
        metric = self.config.val.get("metric", "flow_loss")
        if metric not in ("flow_loss", "sample_mse"):
            raise ValueError(f"config.val.metric must be 'flow_loss' or 'sample_mse', got {metric!r}")
        preview = self.config.val.sample_every and step % self.config.val.sample_every == 0 and write
        out = {}
        if metric == "flow_loss":
            out["val_loss"] = float(self._loss(params, frozen, self.batch))
        if metric == "sample_mse" or preview:  # one sampling pass serves both
            images, mse = self._sample(params, frozen, self.batch)
            if metric == "sample_mse":
                out["val_loss"] = float(mse)
        if preview:
            pred = to_uint8(images)
            src, tgt = to_uint8(self.batch["source"]), to_uint8(self.batch["target"])
            rows = [[(src[i], "source"), (pred[i], self.instructions[i]), (tgt[i], "target")]
                    for i in range(len(self.instructions))]
            save_contact_sheet(rows, os.path.join(workdir, "samples", f"step_{step:07d}.png"))
        return out
