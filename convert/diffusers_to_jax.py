"""diffusers WanTransformer3DModel folder -> anchoredit_jax params folder (config.json + orbax params).

    python convert/diffusers_to_jax.py --src Wan2.1-T2V-1.3B-Diffusers/transformer --out ckpt/wan13b_jax

Only safetensors are read (pickles are refused). Nothing is downloaded; an existing --out is never
overwritten unless --overwrite is given.
"""
import argparse
import sys

from anchoredit_jax import interop


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", required=True, help="diffusers transformer folder (config.json + safetensors)")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--turn-stride", type=int, default=4, help="RoPE turn stride stored in the config")
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)
    model, params = interop.load_diffusers_transformer(args.src, turn_stride=args.turn_stride)
    interop.save_jax_params(model.config, params, args.out, overwrite=args.overwrite)
    c = model.config
    print(f"wrote {args.out}: {c.num_layers} layers, dim {c.dim}, {c.num_heads} heads, ffn {c.ffn_dim}")


if __name__ == "__main__":
    try:
        main()
    except (FileExistsError, FileNotFoundError, ValueError) as e:  # one clear line, no traceback
        sys.exit(f"error: {e}")
