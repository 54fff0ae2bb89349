#!/bin/bash
# Stages 2 and 3 of the shipped ShapesEdit recipe (README, "How the shipped model was made", steps 2
# to 5) from a width-256 stage-1 model, then its pairs and 30 turns; about an hour on 2 CPU cores:
#     S1=runs/stage1_ft OUT=runs/recipe bash launch/cpu_stages23.sh
# S1: the stage-1 training workdir (its EMA weights are released first, to ${OUT}_s1) or release;
# as shipped, the workdir of launch/cpu_stage1_ft.sh.
# It makes ${OUT}_s2 (S2_STEPS=300 steps of teacher-forced stage 2, no history degradation), ${OUT}_blend
# (half stage 1, half stage 2), ${OUT}_s3 (150 steps of consistency distillation from the blend),
# ${OUT}_release (bfloat16, as shipped), ${OUT}_pairs.txt (benchmarks/edit_by_type.py) and ${OUT}_eval
# (30 held-out turns, anchor and naive). Nothing that exists is overwritten: a finished step is
# skipped (train and distill resume a workdir they left unfinished). UNTIL=blend stops after the
# blend (stage 2 and the blend alone, for evaluating the lineage stage by stage). NOOP: the share of
# no-op turns stages 2 and 3 draw (default 0.1, as shipped since 2026-12-06; the model shipped
# before was made with NOOP=0.0 from the H200 stage 1 itself, without launch/cpu_stage1_ft.sh).
# KEPT: stage 2's kept_scale (default 1, as shipped: no change; docs/persistence.md "Edit by edit"
# tried 8): the error on the pixels earlier turns edited weighs KEPT times more outside this turn's mask.
# S2_STEPS: stage 2's steps (default 300, as shipped; docs/persistence.md "Edit by edit" ran 1200 on
# the CPU). BLEND: stage 2's share of the distillation teacher (default 0.5, as shipped: the
# half-half blend); BLEND=1 makes no blend and distils stage 2 itself (docs/persistence.md "Edit by
# edit": weigh the anchor up at editing time instead, --anchor-weight).
set -euo pipefail
S1=${S1:?set S1 to the stage-1 workdir or release}
OUT=${OUT:?set OUT to the prefix of what this makes, e.g. runs/recipe}
UNTIL=${UNTIL:-all}
case $UNTIL in all|blend) ;; *) echo "UNTIL: 'all' or 'blend', not '$UNTIL'" >&2; exit 2 ;; esac
# shellcheck source=/dev/null
. "$(dirname "${BASH_SOURCE[0]}")/noop_share.sh"  # NOOP, default 0.1, checked
KEPT=${KEPT:-1.0}
python -c "import math, sys; k = float(sys.argv[1]); assert math.isfinite(k) and k >= 0" "$KEPT" 2>/dev/null \
  || { echo "KEPT: stage 2's kept_scale, a number >= 0, not '$KEPT'" >&2; exit 2; }
S2_STEPS=${S2_STEPS:-300}
[[ $S2_STEPS =~ ^[1-9][0-9]*$ ]] || { echo "S2_STEPS: stage 2's step count, a whole number >= 1, not '$S2_STEPS'" >&2; exit 2; }
BLEND=${BLEND:-0.5}
python -c "import sys; b = float(sys.argv[1]); assert 0 < b <= 1" "$BLEND" 2>/dev/null \
  || { echo "BLEND: stage 2's share of the distillation teacher, a number in (0, 1], not '$BLEND'" >&2; exit 2; }
MODEL=(--config.model.num_layers=8 --config.model.num_heads=8 --config.model.ffn_dim=1024)
DATA=(--config.data.num_sequences=2000000 --config.vae.workdir=weights/shapes_stage3/vae
      --config.data.edit_weights.add=4.5 --config.data.edit_weights.move=4.5
      --config.data.edit_weights.resize=3.0 --config.data.edit_weights.background=0.5
      --config.data.edit_weights.remove=0.6 --config.data.noop_prob="$NOOP" --config.progress_bar=False)
say() { echo "[$(date -u +%H:%M:%S)] $*"; }

if [ -d "$S1/checkpoints" ]; then
  [ -e "${OUT}_s1" ] || python -m anchoredit_jax.release --checkpoint "$S1" --out "${OUT}_s1" >/dev/null
  S1=${OUT}_s1
fi
say "stage 2 -> ${OUT}_s2"
python -m anchoredit_jax.train --config configs/stage2_shapes.py --workdir "${OUT}_s2" --config.seed=3 \
  "${MODEL[@]}" "${DATA[@]}" --config.init_from="$S1" --config.stage2.outside_mask_weight=0.5 \
  --config.num_steps="$S2_STEPS" --config.optim.warmup_steps=20 --config.optim.lr=1e-5 \
  --config.stage2.ratio_ramp_end=200 --config.ema_decay=0.99 --config.checkpoint.every=100 \
  --config.stage2.ratio_end=0.0 --config.stage2.degrade.prob=0.0 --config.stage2.kept_scale="$KEPT" | tail -1
if [[ $BLEND =~ ^1(\.0*)?$ ]]; then
  TEACHER=${OUT}_s2
  say "no blend (BLEND=1): stage 3 distils ${OUT}_s2"
else
  TEACHER=${OUT}_blend
  say "blend -> ${OUT}_blend"
  [ -e "${OUT}_blend" ] || python benchmarks/blend_weights.py --a "$S1" --b "${OUT}_s2" --alpha "$BLEND" --out "${OUT}_blend"
fi
if [ "$UNTIL" = blend ]; then say done; exit 0; fi
say "stage 3 -> ${OUT}_s3"
python -m anchoredit_jax.distill --config configs/stage3_shapes.py --workdir "${OUT}_s3" --config.seed=2 \
  "${MODEL[@]}" "${DATA[@]}" --config.distill.teacher="$TEACHER" --config.num_steps=150 | tail -1
say "release -> ${OUT}_release"
[ -e "${OUT}_release" ] || python -m anchoredit_jax.release --checkpoint "${OUT}_s3" --dtype bfloat16 \
  --out "${OUT}_release" >/dev/null
say "pairs -> ${OUT}_pairs.txt"
[ -e "${OUT}_pairs.txt" ] || python benchmarks/edit_by_type.py --checkpoint "${OUT}_release" --guidance 1 \
  --steps 4 > "${OUT}_pairs.txt"
grep "model g=" "${OUT}_pairs.txt"
say "30 turns -> ${OUT}_eval"
[ -e "${OUT}_eval" ] || python -m anchoredit_jax.evaluate --checkpoint "s3=${OUT}_release" \
  --methods anchor_w4,naive --turns 30 --num-sequences 16 --out "${OUT}_eval"
python benchmarks/readme_tables.py "${OUT}_eval"
say done
