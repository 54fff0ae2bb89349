"""Stage 1 on ShapesEdit at 64x64 px: a small DiT that learns visibly in minutes on 2 CPU cores.

    python -m anchoredit_jax.train_vae --config configs/vae_shapes.py --workdir runs/vae_shapes
    python -m anchoredit_jax.train --config configs/stage1_shapes.py --workdir runs/stage1_shapes

`--config configs/stage1_shapes.py:test` shrinks everything for unit tests (random VAE, 2 layers).
"""
import ml_collections

from anchoredit_jax import sharding
from anchoredit_jax.data import shapes_edit


def get_config(arg: str = ""):
    test = arg == "test"
    c = ml_collections.ConfigDict()
    c.stage = "stage1"
    c.seed = 0  # also fixes the data order: a run continued with init_from replays it unless changed
    c.num_steps = 20 if test else 3000
    c.batch_size = 8 if test else 32  # global, over all processes
    c.log_every = 1 if test else 25
    c.eval_every = 10 if test else 250  # held-out loss + best checkpoint, and at the end; 0: never
    c.progress_bar = not test
    c.init_from = ""  # a training workdir, a diffusers transformer folder or an anchoredit_jax params folder
    c.init_weights = "ema"  # from a training workdir: "ema", "params" (raw, latest) or "best"
    c.ema_decay = 0.0 if test else 0.999
    c.ema_warmup = True  # False: full decay from step 0 (continuing a trained model with init_from)

    # 4 blocks of width 128 at 8x8 latents. Patch 1 (64 tokens per frame, one per 8x8 px): at
    # patch 2 (16 tokens, 16x16 px each) shapes and eyes came out as blobs and edits were not
    # carried out; at equal steps patch 1 halves the training loss (0.40 vs 0.80 at step 400) for
    # ~1.3x the step time here. The test config keeps patch 2 for speed.
    c.model = ml_collections.ConfigDict(dict(
        num_layers=2 if test else 4, num_heads=2 if test else 4, head_dim=32, ffn_dim=128 if test else 512,
        in_channels=16, out_channels=16, text_dim=384, freq_dim=256, patch_size=(1, 2, 2) if test else (1, 1, 1),
        cross_attn_norm=True, eps=1e-6, rope_max_seq_len=1024, rope_theta=10000.0,
        turn_stride=4, timestep_scale=1000.0,
        dtype="float32", attention_backend="auto", attention_strategy="loop", remat_policy="none",
    ))
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, num_devices=0))  # 0: all devices
    c.sharding_rules = [list(rule) for rule in sharding.DEFAULT_RULES]

    c.data = ml_collections.ConfigDict(dict(
        kind="shapes_edit", split="train", num_sequences=200_000, num_turns=4, resolution=64,
        noop_prob=0.0,  # no-op pairs come from stage1.noop_prob instead, so their share is exact
        first_turn_only=False, worker_count=0, path="",
        echo=1,  # optimizer steps per loaded batch (fresh noise and timesteps each): for input-bound runs
        # how often each edit type is drawn (training data only; validation and evaluation keep the
        # defaults), e.g. --config.data.edit_weights.add=3.0
        edit_weights=dict(shapes_edit.DEFAULT_EDIT_WEIGHTS)))
    c.text = ml_collections.ConfigDict(dict(max_length=24, cache_entries=50_000))
    c.vae = ml_collections.ConfigDict(dict(
        workdir="random" if test else "runs/vae_shapes",  # output of anchoredit_jax.train_vae
        model=dict(base_dim=8, z_dim=16, dim_mult=(1, 2, 2, 2), num_res_blocks=1, attn_scales=(),
                   temperal_downsample=(False, True, True))))  # used only with workdir="random"

    c.stage1 = ml_collections.ConfigDict(dict(
        noop_prob=0.1,            # identity pairs: target = source
        cfg_drop_prob=0.1,        # instruction -> null embedding, for classifier-free guidance
        outside_mask_weight=2.0,  # error outside the edit mask counts double: keep what was not asked
        timestep_sampling="logit_normal", timestep_shift=1.0))

    c.optim = ml_collections.ConfigDict(dict(
        lr=1e-3 if test else 3e-4, warmup_steps=2 if test else 200, end_lr_factor=0.1, weight_decay=0.01,
        b1=0.9, b2=0.99, grad_clip=1.0, grad_accum_steps=1))

    c.val = ml_collections.ConfigDict(dict(
        # the loss over loss_examples pairs, batch_size per call; the first num_examples make the preview
        split="heldout_seeds", seed_offset=0, num_examples=4 if test else 6, loss_examples=8 if test else 256,
        batch_size=4 if test else 64,
        sample_every=10 if test else 500, sample_steps=4 if test else 20, sampler="euler", sample_shift=1.0,
        guidance=3.0))
    c.checkpoint = ml_collections.ConfigDict(dict(every=5 if test else 500, max_to_keep=3, async_save=True))
    c.debug = ml_collections.ConfigDict(dict(nan_at_step=-1, step_sleep=0.0, sigterm_at_step=-1))  # test hooks
    # jax.profiler trace of steps first_step .. first_step + num_steps - 1 (as logged) into
    # workdir/profile; -1: off. E.g. --config.profile.first_step=30 (past compilation).
    c.profile = ml_collections.ConfigDict(dict(first_step=-1, num_steps=3))
    return c
