"""Stage 3 on ShapesEdit: consistency distillation of the stage-2 model into a 4-step editor.

    python -m anchoredit_jax.distill --config configs/stage3_shapes.py --workdir runs/stage3_shapes

Everything not set here is stage 2's (configs/stage2_shapes.py): same model, data, VAE, memory.
The distilled model edits with the consistency sampler (4 steps, guidance baked in), which is
what this config's `val` section tells `anchoredit_jax.edit`.
"""
import os

import ml_collections

from anchoredit_jax.config_lib import load_config


def get_config(arg: str = ""):
    test = arg == "test"
    c = load_config(os.path.join(os.path.dirname(os.path.abspath(__file__)), "stage2_shapes.py"), arg)
    c.stage = "stage3"
    c.num_steps = 6 if test else 400
    c.batch_size = 4 if test else 8
    c.init_from = ""  # the student starts from distill.teacher
    c.data.num_turns = 3 if test else 6  # longer than W + 1: the memory evicts during distillation
    c.distill = ml_collections.ConfigDict(dict(
        teacher="random" if test else "runs/stage2_shapes", teacher_weights="ema",
        guidance=3.0,                    # classifier-free guidance baked into the student
        grid_points=48, grid_shift=1.0,  # the discretisation of [0, 1] the teacher steps on
        teacher_solver="euler",          # one teacher ODE step per loss (euler | midpoint)
        target_decay=0.9 if test else 0.995,  # EMA target theta^- (with warm-up, optim.ema_update)
        loss="huber", huber_c=0.03,      # pseudo-Huber between f_student(x_hi) and f_target(x_lo)
        x0_from="data",                  # x_hi noises the data target ("data") or the rollout
        rollout_from="teacher",          # whose frames fill the memory: "teacher" (CFG Euler) or "student"
        rollout_steps=2 if test else 4, rollout_guidance=3.0,  # (the student: consistency steps, no CFG)
        window=c.stage2.window, keep_anchor=c.stage2.keep_anchor,
    ))
    c.optim.lr = 1e-3 if test else 5e-5
    c.optim.warmup_steps = 1 if test else 50
    c.optim.end_lr_factor = 1.0  # constant after warm-up, as consistency training usually runs
    # Editing and validation with the distilled model: 4 consistency steps, no CFG (it is baked in).
    c.val.sampler, c.val.sample_steps, c.val.guidance, c.val.sample_shift = "consistency", 4, 1.0, 1.0
    c.val.metric = "sample_mse"
    c.eval_every = 3 if test else 100
    c.val.sample_every = 0 if test else 100
    c.checkpoint.every = 3 if test else 100
    return c
