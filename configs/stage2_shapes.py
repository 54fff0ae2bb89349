"""Stage 2 on ShapesEdit: causal AR forcing with self-rollout, initialised from stage 1.

    python -m anchoredit_jax.train --config configs/stage2_shapes.py --workdir runs/stage2_shapes \\
        --config.init_from=runs/stage1_shapes

Everything not set here is stage 1's (configs/stage1_shapes.py): same model, data, VAE, text.
"""
import os

import ml_collections

from anchoredit_jax.config_lib import load_config


def get_config(arg: str = ""):
    test = arg == "test"
    c = load_config(os.path.join(os.path.dirname(os.path.abspath(__file__)), "stage1_shapes.py"), arg)
    c.stage = "stage2"
    c.num_steps = 6 if test else 800  # 22 min on the 2-core CPU (W = 4)
    c.batch_size = 4 if test else 8
    c.init_from = "" if test else "runs/stage1_shapes"
    # K = 6 turns with a window of 4: longer than W + 1 = 5, so eviction happens in training. W = 4 is
    # the window the evaluation and the edit CLI use (`anchor_w4`, --window 4): the query then sits at
    # the same RoPE turn position (5) as in training.
    c.data.num_turns = 6
    # A tenth of the turns are no-ops ("keep it as it is", ...), as in the evaluation's sequences; stage 1
    # draws its own (stage1.noop_prob), so its config keeps data.noop_prob at 0. Stage 3 inherits this.
    c.data.noop_prob = 0.1
    c.stage2 = ml_collections.ConfigDict(dict(
        window=4, keep_anchor=True,  # the same memory as at inference
        rollout_steps=2 if test else 4, rollout_method="euler", rollout_guidance=3.0,
        ratio_start=0.0, ratio_end=1.0,  # teacher forcing -> full self-rollout ...
        ratio_ramp_start=0, ratio_ramp_end=3 if test else 300,  # ... over these steps
        turn_weight_alpha=1.0,  # w_k = 1 + alpha (k-1)/(K-1): later turns weigh up to 2x
        outside_mask_weight=2.0,
        kept_scale=1.0,  # > 1: the pixels earlier turns edited weigh more outside the mask (docs/persistence.md)
        # > 0: that share of the turns no rollout writes get the model's one-step estimate of the frame
        # (x_t - t v of the loss's own call, when t < own_estimate_max_t) in memory instead of the truth
        own_estimate=0.0, own_estimate_max_t=0.5,
        cfg_drop_prob=0.1, timestep_sampling="logit_normal", timestep_shift=1.0,
        # untouched_only: degrade only the pixels no edit has touched yet (the anchor still holds them)
        degrade=ml_collections.ConfigDict(dict(prob=0.15, colour=0.2, field=0.3, laplace=0.1, blur=1.0,
                                               untouched_only=False)),
    ))
    c.optim.lr = 1e-3 if test else 1e-4
    c.optim.warmup_steps = 1 if test else 100
    return c
