"""Stage 1 at Wan2.1-T2V-1.3B shape, initialised from the converted diffusers checkpoint.

    python -m anchoredit_jax.train --config configs/stage1_wan13b.py --workdir runs/stage1_wan13b \\
        --config.init_from=Wan2.1-T2V-1.3B-Diffusers/transformer --config.vae.workdir=Wan2.1-T2V-1.3B-Diffusers/vae

Text: MiniLM-L6 (384-d, offline) instead of Wan's umT5-XXL (4096-d), so the first text projection
is initialised afresh (`init_reinit`) and everything else comes from Wan. Images: 512x512 ->
64x64 latents -> 1024 tokens per frame; a pair is 2 frames. One host of 8 GPUs: FSDP over 8.
"""
import ml_collections

from anchoredit_jax import sharding


def get_config():
    c = ml_collections.ConfigDict()
    c.stage = "stage1"
    c.seed = 0
    c.num_steps = 20_000
    c.batch_size = 32
    c.log_every = 20
    c.eval_every = 1000
    c.progress_bar = True
    c.init_from = ""  # required in practice: the diffusers transformer folder
    c.init_reinit = ["condition_embedder/text_embedder/linear_1/kernel"]  # 384-d MiniLM, not 4096-d umT5
    c.ema_decay = 0.9999
    c.ema_warmup = True  # False: full decay from step 0 (continuing a trained model with init_from)

    c.model = ml_collections.ConfigDict(dict(
        num_layers=30, num_heads=12, head_dim=128, ffn_dim=8960, in_channels=16, out_channels=16,
        text_dim=384, freq_dim=256, patch_size=(1, 2, 2), cross_attn_norm=True, eps=1e-6,
        rope_max_seq_len=1024, rope_theta=10000.0, turn_stride=4, timestep_scale=1000.0,
        dtype="bfloat16", attention_backend="auto", attention_strategy="loop",
        remat_policy="dots_no_batch"))  # recompute everything but the matmuls: fits B=4/GPU at 512^2
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
    c.sharding_rules = [list(rule) for rule in sharding.DEFAULT_RULES]

    c.data = ml_collections.ConfigDict(dict(
        kind="jsonl", path="", split="train", num_sequences=0, num_turns=5, resolution=512, noop_prob=0.0,
        first_turn_only=False, worker_count=8, echo=1))
    c.text = ml_collections.ConfigDict(dict(max_length=64, cache_entries=200_000))
    c.vae = ml_collections.ConfigDict(dict(workdir="", model={}))  # the diffusers AutoencoderKLWan folder

    c.stage1 = ml_collections.ConfigDict(dict(
        noop_prob=0.1, cfg_drop_prob=0.1, outside_mask_weight=2.0,
        timestep_sampling="shifted", timestep_shift=3.0))  # Wan's shift at 512^2
    c.optim = ml_collections.ConfigDict(dict(
        lr=2e-5, warmup_steps=500, end_lr_factor=0.1, weight_decay=0.01, b1=0.9, b2=0.999, grad_clip=1.0,
        grad_accum_steps=1))
    c.val = ml_collections.ConfigDict(dict(
        split="heldout_seeds", seed_offset=0, num_examples=4, loss_examples=64, batch_size=8,
        sample_every=1000, sample_steps=30,
        sampler="euler", sample_shift=3.0, guidance=4.0))
    c.checkpoint = ml_collections.ConfigDict(dict(every=1000, max_to_keep=3, async_save=True))
    c.debug = ml_collections.ConfigDict(dict(nan_at_step=-1, step_sleep=0.0))
    # jax.profiler trace of steps first_step .. first_step + num_steps - 1 (as logged) into
    # workdir/profile; -1: off. E.g. --config.profile.first_step=30 (past compilation).
    c.profile = ml_collections.ConfigDict(dict(first_step=-1, num_steps=3))
    c.peak_flops_per_device = 0.0  # 0: looked up from the device kind (H100: 989 TFLOP/s bf16)
    return c
