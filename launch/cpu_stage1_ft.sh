#!/bin/bash
# Step 1b of the shipped ShapesEdit recipe (README, "How the shipped model was made"): stage-1 steps
# on the CPU from the H200 stage-1 model, with the no-op fix of 2026-12-06 (identity pairs read a
# no-op phrasing). As shipped since 2026-12-07, two calls: 150 steps (about 7 minutes on 2 CPU cores),
# then 450 more from them with another data order (about 17 minutes):
#     OUT=runs/stage1_ft bash launch/cpu_stage1_ft.sh
#     S1=runs/stage1_ft OUT=runs/stage1_ft450 STEPS=450 SEED=42 bash launch/cpu_stage1_ft.sh
# S1: the stage-1 model to start from (default out/shapes_stage1: the H200 run's bfloat16 release,
# restored from git history when missing; or a finished workdir of this script). OUT: the training
# workdir it makes; then `S1=$OUT OUT=... bash launch/cpu_stages23.sh` takes it through stages 2 and
# 3. A finished OUT is left as it is (train resumes one left unfinished). STEPS (default 150) and
# SEED (default 41, the data order): the number of steps and the data order.
set -euo pipefail
OUT=${OUT:?set OUT to the workdir this makes, e.g. runs/stage1_ft}
S1=${S1:-out/shapes_stage1}
STEPS=${STEPS:-150}
SEED=${SEED:-41}
[[ $STEPS =~ ^[1-9][0-9]*$ ]] || { echo "STEPS: a positive whole number of steps, not '$STEPS'" >&2; exit 2; }
[[ $SEED =~ ^[0-9]+$ ]] || { echo "SEED: a whole number, not '$SEED'" >&2; exit 2; }
if [ ! -d "$S1" ]; then
  [ "$S1" = out/shapes_stage1 ] || { echo "S1: no folder $S1" >&2; exit 2; }
  mkdir -p "$S1" && git archive b15f759 weights/shapes_stage1 | tar -x --strip-components=2 -C "$S1"
fi
python -m anchoredit_jax.train --config=configs/stage1_shapes.py --workdir="$OUT" --config.seed="$SEED" \
  --config.batch_size=32 --config.data.num_sequences=2000000 --config.data.worker_count=1 \
  --config.model.num_layers=8 --config.model.num_heads=8 --config.model.ffn_dim=1024 --config.num_steps="$STEPS" \
  --config.optim.warmup_steps=10 --config.optim.lr=4e-5 --config.ema_decay=0.99 --config.ema_warmup=False \
  --config.stage1.outside_mask_weight=0.5 --config.data.edit_weights.add=4.5 --config.data.edit_weights.move=4.5 \
  --config.data.edit_weights.resize=3.0 --config.data.edit_weights.background=0.5 \
  --config.data.edit_weights.remove=0.6 --config.vae.workdir=weights/shapes_stage3/vae \
  --config.init_from="$S1" --config.eval_every=0 --config.checkpoint.every=150 \
  --config.log_every=25 --config.val.sample_every=0 --config.progress_bar=False
