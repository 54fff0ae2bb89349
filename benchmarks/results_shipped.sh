#!/bin/bash
# The evaluations behind README's "The shipped model" tables (run from the repo root of a full clone).
# The shipped three-stage model (weights/shapes_stage3) against its stage-1 teacher (the width-256
# model trained on one H200, shipped as bfloat16 until 2026-12-05: restored from git history into
# out/shapes_stage1 unless S1_DIR names a copy). Both use the VAE shipped with them (byte-identical).
# For another lineage (a candidate to ship): S1_DIR, S3_DIR, LINEAGE (the prefix cpu_stages23.sh
# made its stage 2 and blend under; NOOP= reaches it) and RES (the prefix of the outputs), e.g.
#     S1_DIR=out/noop3_s1 S3_DIR=out/noop3_release LINEAGE=out/noop3 RES=out/next bash benchmarks/results_shipped.sh
set -ex  # stop at the first failing evaluation
S1_DIR=${S1_DIR:-out/shapes_stage1}; S3_DIR=${S3_DIR:-weights/shapes_stage3}
LINEAGE=${LINEAGE:-out/lineage}; RES=${RES:-out/shipped}
if [ ! -d "$S1_DIR" ]; then
  [ "$S1_DIR" = out/shapes_stage1 ] || { echo "S1_DIR: no folder $S1_DIR" >&2; exit 2; }
  mkdir -p "$S1_DIR" && git archive b15f759 weights/shapes_stage1 | tar -x --strip-components=2 -C "$S1_DIR"
fi
E="python -m anchoredit_jax.evaluate --overwrite"  # replaces only its own files in ${RES}_*
S1=stage1=$S1_DIR; S3=stage3=$S3_DIR
time $E --checkpoint $S1 --checkpoint $S3 --methods anchor_w4,no_anchor_w4,naive,copy --turns 30 --num-sequences 16 --out ${RES}_main
time $E --checkpoint $S1 --checkpoint $S3 --methods anchor_w4,naive --turns 10 --num-sequences 16 --protocols roundtrip,noop --out ${RES}_protocols
time $E --checkpoint $S3 --methods anchor_w4,naive,mcie,mcie_anchor_w4 --turns 10 --num-sequences 16 --out ${RES}_mcie
time $E --checkpoint $S3 --methods anchor_w4 --steps 1,2,4,8 --turns 30 --num-sequences 16 --out ${RES}_steps
# Stage by stage (added 2026-12-06): the stage 2 and the blend between stage 1 and the shipped model,
# remade from the stage-1 weights by README's recipe (steps 2 and 3: 26 minutes on 2 CPU cores),
# then every stage of the lineage, the shipped model with windows 1, 2, 4 and 8, and the lineage's
# round trips and no-op turns.
[ -d ${LINEAGE}_blend ] || UNTIL=blend S1="$S1_DIR" OUT="$LINEAGE" bash launch/cpu_stages23.sh
time $E --checkpoint $S1 --checkpoint stage2=${LINEAGE}_s2 --checkpoint blend=${LINEAGE}_blend --checkpoint $S3 \
  --methods anchor_w4 --turns 30 --num-sequences 16 --out ${RES}_lineage
time $E --checkpoint $S3 --methods anchor_w4 --windows 1,2,8 --turns 30 --num-sequences 16 --out ${RES}_windows
time $E --checkpoint $S1 --checkpoint stage2=${LINEAGE}_s2 --checkpoint blend=${LINEAGE}_blend --checkpoint $S3 \
  --methods anchor_w4 --turns 10 --num-sequences 16 --protocols roundtrip,noop --out ${RES}_lineage_protocols
