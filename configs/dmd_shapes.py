"""DMD on ShapesEdit: distribution matching distillation of the stage-3 4-step editor (anchoredit_jax/dmd.py).

    python -m anchoredit_jax.dmd --config configs/dmd_shapes.py --workdir runs/dmd_shapes \\
        --config.dmd.generator=runs/stage3_shapes --config.dmd.teacher=runs/stage2_shapes

Everything not set here is stage 3's (configs/stage3_shapes.py), hence stage 2's: same model, data,
VAE, memory; the result edits like stage 3 (4 consistency steps, guidance baked in).
"""
import os

import ml_collections

from anchoredit_jax.config_lib import load_config


def get_config(arg: str = ""):
    test = arg == "test"
    c = load_config(os.path.join(os.path.dirname(os.path.abspath(__file__)), "stage3_shapes.py"), arg)
    c.stage = "dmd"
    c.num_steps = 6 if test else 200
    c.dmd = ml_collections.ConfigDict(dict(
        generator="random" if test else "runs/stage3_shapes", generator_weights="ema",  # the 4-step student
        teacher="random" if test else "runs/stage2_shapes", teacher_weights="ema",      # the real score
        num_steps=c.val.sample_steps,  # the generator's consistency steps (t = 1, .75, .5, .25 for 4)
        real_guidance=3.0,             # CFG of the real score (the teacher), as stage 3 baked in
        gen_every=5,                   # a generator update every 5th step, the fake score every step (DMD2) ...
        fake_warmup=0 if test else 20, # ... after this many steps of the fake score alone (it starts as the teacher)
        t_min=0.02, t_max=0.98,        # the noise levels the scores are compared at
        fake_lr=1e-3 if test else 2e-5, fake_timesteps="uniform",
        ema_decay=0.9 if test else 0.99,  # of the generator, from its stage-3 weights (no warm-up)
        window=c.distill.window, keep_anchor=c.distill.keep_anchor,
    ))
    del c.distill
    c.optim.lr = 1e-3 if test else 2e-6  # the generator: DMD moves it with small steps
    c.optim.warmup_steps = 1 if test else 20  # generator updates (100 steps at gen_every 5), as its schedule counts
    c.optim.end_lr_factor = 1.0
    c.eval_every = 3 if test else 50
    c.val.sample_every = 0 if test else 50
    c.checkpoint.every = 3 if test else 50
    return c
