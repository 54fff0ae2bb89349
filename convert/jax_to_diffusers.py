"""anchoredit_jax params folder -> diffusers WanTransformer3DModel folder (loads with from_pretrained).

    python convert/jax_to_diffusers.py --src ckpt/wan13b_jax --out served/transformer [--dtype bfloat16]

Writes sharded safetensors with an index when the weights exceed --max-shard-gb.
"""
import argparse
import sys

import jax.numpy as jnp

from anchoredit_jax import interop


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", required=True, help="anchoredit_jax params folder (config.json + params/)")
    ap.add_argument("--out", required=True, help="output diffusers folder")
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    ap.add_argument("--max-shard-gb", type=float, default=5.0)
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)
    model, params = interop.load_jax_params(args.src)
    interop.save_diffusers_transformer(model.config, params, args.out, dtype=jnp.dtype(args.dtype),
                                       max_shard_bytes=int(args.max_shard_gb * 2**30), overwrite=args.overwrite)
    print(f"wrote {args.out} ({args.dtype})")


if __name__ == "__main__":
    try:
        main()
    except (FileExistsError, FileNotFoundError, ValueError) as e:  # one clear line, no traceback
        sys.exit(f"error: {e}")
