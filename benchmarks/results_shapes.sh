#!/bin/bash
# The evaluation runs behind the CPU lineage's tables (docs/experiments.md; run from the repo root after its training commands).
set -ex  # stop at the first failing evaluation
VAE=${VAE:-runs/vae_shapes_ft}  # the decoder fine-tune of the runs' VAE (same encoder, same latents) that is shipped
E="python -m anchoredit_jax.evaluate --overwrite --vae $VAE"  # replaces only its own files in out/eval_*
R1=${R1:-runs/stage1_mix3k}; R2=${R2:-runs/stage2_mix3k}; R3=${R3:-runs/stage3_mix3k}  # the shipped lineage of README's training commands
S1=stage1=$R1; S2=stage2=$R2; S3=stage3=$R3
time $E --checkpoint teacher=$R2 --checkpoint distilled=$R3 --methods anchor_w4 --steps 4,20 --turns 10 --num-sequences 8 --batch-size 1 --out out/eval_distill
time $E --checkpoint $S1 --checkpoint $S2 --checkpoint $S3 --methods anchor_w4,no_anchor_w4,naive,copy --turns 30 --num-sequences 16 --out out/eval_main
time $E --checkpoint $S1 --methods anchor_w4,naive,mcie,mcie_anchor_w4 --turns 10 --num-sequences 16 --out out/eval_mcie
time $E --checkpoint $S1 --checkpoint $S2 --checkpoint $S3 --methods anchor_w4,naive --turns 10 --num-sequences 16 --protocols roundtrip,noop --out out/eval_protocols
time $E --checkpoint $S1 --methods anchor_w1,anchor_w2,anchor_w4,anchor_w8 --turns 30 --num-sequences 16 --out out/eval_windows
