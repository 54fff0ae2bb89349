#!/bin/bash
# The evaluations behind README's "Results on ShapesEdit" tables (run from the repo root of a full clone).
# The shipped three-stage model (weights/shapes_stage3) against its stage-1 teacher and, stage by
# stage, its whole lineage, remade by README's recipe when missing (out/lineage_{s1,s2,blend}: the
# stage-1 fine-tunes of launch/cpu_stage1_ft.sh from the H200 model, restored from git history, 150
# steps then 450 more, then stage 2 and the blend of launch/cpu_stages23.sh with NOOP=0.1; about 47
# minutes on 2 CPU cores).
# Every model uses the VAE shipped with them (byte-identical).
# For another lineage (a candidate to ship): S1_DIR, S3_DIR, LINEAGE (the prefix cpu_stages23.sh
# made its stage 2 and blend under; NOOP= reaches it) and RES (the prefix of the outputs), e.g.
#     S1_DIR=out/ft450x_s1 S3_DIR=out/ft450x_release LINEAGE=out/ft450x RES=out/r450 bash benchmarks/results_shipped.sh
set -ex  # stop at the first failing evaluation
LINEAGE=${LINEAGE:-out/lineage}; S1_DIR=${S1_DIR:-${LINEAGE}_s1}
S3_DIR=${S3_DIR:-weights/shapes_stage3}; RES=${RES:-out/shipped}
# shellcheck source=/dev/null
. "$(dirname "${BASH_SOURCE[0]}")/../launch/noop_share.sh"  # NOOP checked before any remake
if [ ! -d "$S1_DIR" ]; then
  [ "$S1_DIR" = out/lineage_s1 ] || { echo "S1_DIR: no folder $S1_DIR" >&2; exit 2; }
  OUT=out/lineage_stage1_ft bash launch/cpu_stage1_ft.sh  # restores the H200 model into out/shapes_stage1
  S1=out/lineage_stage1_ft OUT=out/lineage_stage1_ft450 STEPS=450 SEED=42 bash launch/cpu_stage1_ft.sh
  UNTIL=blend NOOP="$NOOP" S1=out/lineage_stage1_ft450 OUT=out/lineage bash launch/cpu_stages23.sh  # makes out/lineage_s1
fi
E="python -m anchoredit_jax.evaluate --overwrite"  # replaces only its own files in ${RES}_*
S1=stage1=$S1_DIR; S3=stage3=$S3_DIR
time $E --checkpoint $S1 --checkpoint $S3 --methods anchor_w4,no_anchor_w4,naive,copy --turns 30 --num-sequences 16 --out ${RES}_main
time $E --checkpoint $S1 --checkpoint $S3 --methods anchor_w4,naive --turns 10 --num-sequences 16 --protocols roundtrip,noop --out ${RES}_protocols
time $E --checkpoint $S3 --methods anchor_w4,naive,mcie,mcie_anchor_w4 --turns 10 --num-sequences 16 --out ${RES}_mcie
time $E --checkpoint $S3 --methods anchor_w4 --steps 1,2,4,8 --turns 30 --num-sequences 16 --out ${RES}_steps
# Stage by stage: every stage of the lineage (stage 2 and the blend remade from S1_DIR by README's
# recipe if missing: 26 minutes on 2 CPU cores), the shipped model with windows 1, 2, 4 and 8, and the
# lineage's round trips and no-op turns.
[ -d "${LINEAGE}_blend" ] || UNTIL=blend NOOP="$NOOP" S1="$S1_DIR" OUT="$LINEAGE" bash launch/cpu_stages23.sh
time $E --checkpoint $S1 --checkpoint stage2=${LINEAGE}_s2 --checkpoint blend=${LINEAGE}_blend --checkpoint $S3 \
  --methods anchor_w4 --turns 30 --num-sequences 16 --out ${RES}_lineage
time $E --checkpoint $S3 --methods anchor_w4 --windows 1,2,8 --turns 30 --num-sequences 16 --out ${RES}_windows
time $E --checkpoint $S1 --checkpoint stage2=${LINEAGE}_s2 --checkpoint blend=${LINEAGE}_blend --checkpoint $S3 \
  --methods anchor_w4 --turns 10 --num-sequences 16 --protocols roundtrip,noop --out ${RES}_lineage_protocols
