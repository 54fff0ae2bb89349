#!/usr/bin/env bash
# Start anchoredit_jax training on every worker of a Cloud TPU VM pod slice:
#   gcloud compute tpus tpu-vm ssh NAME --zone=ZONE --worker=all \
#     --command='cd DIR && python3 -m anchoredit_jax.train ...'
# Every worker runs the same command; jax.distributed.initialize() finds the other workers itself.
# `launch/tpu_pod.sh --help` lists the options; --dry-run prints the gcloud commands and runs nothing.
# Written for bash >= 3.2 (macOS) too: no mapfile, no ${x@Q}, guarded empty-array expansions.
set -euo pipefail

PROG=${0##*/}
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARBALL_NAME=anchoredit_jax_src.tar.gz  # setup: copied into each worker's home directory

usage() {
  cat <<EOF
Usage: $PROG --name TPU --zone ZONE --config FILE --workdir DIR [options] [--config.KEY=VALUE ...] [-- ARGS...]
       $PROG --name TPU --zone ZONE --setup-only [options]
       $PROG --name TPU --zone ZONE --stop [options]

Runs \`python3 -m anchoredit_jax.train --config=FILE --workdir=DIR [overrides]\` on every worker of the
TPU VM pod slice TPU at once (gcloud compute tpus tpu-vm ssh --worker=all).

Required:
  --name NAME          TPU VM (pod slice) name
  --zone ZONE          its zone, e.g. us-central2-b
  --config FILE        experiment config, relative to the repository root (configs/stage1_shapes.py,
                       configs/vae_shapes.py:smoke)
  --workdir DIR        checkpoints, metrics and samples. Every worker must see the same directory
                       (NFS / Filestore, or a bucket mounted with gcsfuse at the same path on every
                       worker); a worker-local path loses the run when the slice is preempted

Options:
  --project PROJECT    Google Cloud project (default: gcloud's configured project)
  --config.KEY=VALUE   config override, passed through unchanged (repeatable; quote values with spaces)
  -- ARGS...           everything after -- is passed to the training module unchanged
  --module MODULE      Python module to run (default: anchoredit_jax.train; e.g. anchoredit_jax.train_vae)
  --env KEY=VALUE      environment variable for the training processes (repeatable)
  --remote-dir DIR     repository location on the workers, relative to the remote home directory
                       unless absolute (default: anchoredit_jax)
  --python PYTHON      Python on the workers (default: python3)
  --setup              first copy this working tree (git-tracked and untracked, non-ignored files) to
                       every worker and pip install it (-e . plus --pip-packages), then train
  --setup-only         only the setup step
  --pip-packages PKGS  extra packages for the setup's pip install (default: 'jax[tpu]')
  --detach             start training in the background on every worker (setsid nohup, appending to
                       REMOTE_DIR/train.log) and return; stop it later with --stop
  --stop               send SIGTERM to the training processes on every worker: each saves a checkpoint
                       and exits; rerunning the same training command resumes from it
  --dry-run            print the commands that would run (shell-quoted), run nothing
  -h, --help           this help

Preemption: on SIGTERM the training loop saves a checkpoint and exits; rerun the same command to
resume from the latest checkpoint in --workdir (data position included).

Example:
  $PROG --name my-v4-32 --zone us-central2-b --setup \\
      --config configs/stage1_shapes.py --workdir /mnt/shared/runs/stage1 \\
      --config.batch_size=256 '--config.note=first pod run'
EOF
}

die() {
  printf '%s: error: %s\n' "$PROG" "$*" >&2
  printf "Run '%s --help' for usage.\n" "$PROG" >&2
  exit 2
}

warn() { printf '%s: warning: %s\n' "$PROG" "$*" >&2; }

# One word for a POSIX shell: unchanged when safe, else single-quoted; for --flag=value only the value
# is quoted (--config.note='a b'), which the shell reads back as the same single word.
shq() {
  local s=$1 prefix=
  if [[ -z $s ]]; then
    printf "''"
    return 0
  fi
  if [[ $s =~ ^[A-Za-z0-9_./:,@%+=-]+$ ]]; then
    printf '%s' "$s"
    return 0
  fi
  if [[ $s =~ ^(--?[A-Za-z0-9_.-]+=)(.*)$ ]]; then
    prefix=${BASH_REMATCH[1]}
    s=${BASH_REMATCH[2]}
  fi
  local q="'\\''"
  printf "%s'%s'" "$prefix" "${s//\'/$q}"
}

shjoin() {
  local out='' w
  for w in "$@"; do
    out+="${out:+ }$(shq "$w")"
  done
  printf '%s' "$out"
}

NAME='' ZONE='' PROJECT='' CONFIG='' WORKDIR=''
MODULE=anchoredit_jax.train REMOTE_DIR=anchoredit_jax PYTHON=python3 PIP_PACKAGES='jax[tpu]'
SETUP=0 SETUP_ONLY=0 DETACH=0 STOP=0 DRY_RUN=0
ENVS=(PYTHONUNBUFFERED=1 ANCHOREDIT_DISTRIBUTED=1)  # every worker joins jax.distributed
EXTRA=()

while (($#)); do
  arg=$1
  shift
  case $arg in
    --)
      EXTRA+=("$@")
      break
      ;;
    --config.*)
      EXTRA+=("$arg")
      continue
      ;;
    -h | --help)
      usage
      exit 0
      ;;
    --setup) SETUP=1; continue ;;
    --setup-only) SETUP=1 SETUP_ONLY=1; continue ;;
    --detach) DETACH=1; continue ;;
    --stop) STOP=1; continue ;;
    --dry-run) DRY_RUN=1; continue ;;
  esac
  # Options with a value: --opt=value or --opt value.
  case $arg in
    --*=*) opt=${arg%%=*} val=${arg#*=} ;;
    --*)
      opt=$arg
      if (($# == 0)) || [[ $1 == --* ]]; then
        die "$opt needs a value"
      fi
      val=$1
      shift
      ;;
    *) die "unexpected argument '$arg' (overrides look like --config.KEY=VALUE; other training flags go after --)" ;;
  esac
  case $opt in
    --name) NAME=$val ;;
    --zone) ZONE=$val ;;
    --project) PROJECT=$val ;;
    --config) CONFIG=$val ;;
    --workdir) WORKDIR=$val ;;
    --module) MODULE=$val ;;
    --remote-dir) REMOTE_DIR=$val ;;
    --python) PYTHON=$val ;;
    --pip-packages) PIP_PACKAGES=$val ;;
    --env)
      [[ $val =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env wants KEY=VALUE, got '$val'"
      ENVS+=("$val")
      ;;
    *) die "unknown option '$opt'" ;;
  esac
done

[[ -n $NAME ]] || die "--name is required (the TPU VM name)"
[[ -n $ZONE ]] || die "--zone is required (the TPU VM's zone)"
[[ -n $REMOTE_DIR ]] || die "--remote-dir must not be empty"
[[ $MODULE =~ ^[A-Za-z_][A-Za-z0-9_.]*$ ]] || die "--module must be a Python module name, got '$MODULE'"
TRAIN=1
if ((STOP || SETUP_ONLY)); then
  TRAIN=0
  if ((STOP && SETUP)); then die "--stop cannot be combined with --setup/--setup-only"; fi
  if [[ -n $CONFIG || -n $WORKDIR || ${#EXTRA[@]} -gt 0 ]]; then
    die "--stop and --setup-only start no training: drop --config, --workdir and overrides"
  fi
else
  [[ -n $CONFIG ]] || die "--config is required (e.g. --config configs/stage1_shapes.py)"
  [[ -n $WORKDIR ]] || die "--workdir is required (a directory every worker shares)"
  case $WORKDIR in
    gs://* | s3://*)
      # anchoredit_jax.train writes the workdir with os.makedirs/open and checkpointing.py uses
      # os.path.abspath, which turns gs://bucket/run into a local folder on each worker. Remove this
      # check once the training code writes through a cloud path API (e.g. etils.epath).
      die "--workdir $WORKDIR: cloud URLs are not supported by the training code yet; mount the bucket
  with gcsfuse at the same path on every worker (or use NFS) and pass that path"
      ;;
  esac
  if [[ ! -f $REPO_ROOT/${CONFIG%%:*} && ${CONFIG:0:1} != / ]]; then
    warn "config '${CONFIG%%:*}' is not in this checkout ($REPO_ROOT); the workers must have it"
  fi
fi

GFLAGS=(--zone="$ZONE")
if [[ -n $PROJECT ]]; then
  GFLAGS+=(--project="$PROJECT")
fi
SSH=(gcloud compute tpus tpu-vm ssh "$NAME" "${GFLAGS[@]}" --worker=all)
SCP=(gcloud compute tpus tpu-vm scp "${GFLAGS[@]}" --worker=all)
CD="cd $(shq "$REMOTE_DIR")"

run() {  # run one command, or under --dry-run print it shell-quoted
  if ((DRY_RUN)); then
    printf '%s\n' "$(shjoin "$@")"
  else
    "$@"
  fi
}

run_ssh() {  # run_ssh REMOTE_COMMAND: run it on every worker
  if ((DRY_RUN)); then
    printf '# on every worker: %s\n' "$1"
  fi
  run "${SSH[@]}" --command="$1"
}

if ((DRY_RUN)); then
  echo "# dry run: $PROG would run these commands (nothing was run)"
fi

if ((SETUP)); then
  if ((DRY_RUN)); then
    tmp=${TMPDIR:-/tmp}/anchoredit_jax.XXXXXX
    echo "# pack $REPO_ROOT (git ls-files --cached --others --exclude-standard) into $tmp/$TARBALL_NAME"
  else
    command -v git >/dev/null || die "--setup needs git (it packs the git-visible files of $REPO_ROOT)"
    git -C "$REPO_ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1 || die "$REPO_ROOT is not a git checkout"
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/anchoredit_jax.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    # Tracked and untracked files that .gitignore does not exclude (no .venv, runs/, caches);
    # tracked files deleted from the working tree are skipped.
    (
      cd "$REPO_ROOT"
      git ls-files -z --cached --others --exclude-standard |
        while IFS= read -r -d '' f; do
          if [[ -f $f ]]; then printf '%s\0' "$f"; fi
        done |
        COPYFILE_DISABLE=1 tar --null -T - -czf "$tmp/$TARBALL_NAME"
    )
  fi
  run "${SCP[@]}" "$tmp/$TARBALL_NAME" "$NAME:$TARBALL_NAME"
  # The word splitting of PIP_PACKAGES is wanted: one pip argument per package.
  read -r -a pip_pkgs <<<"$PIP_PACKAGES"
  setup_cmd="set -e; mkdir -p $(shq "$REMOTE_DIR"); tar -xzf $TARBALL_NAME -C $(shq "$REMOTE_DIR"); rm -f $TARBALL_NAME"
  setup_cmd+="; $CD; $(shjoin "$PYTHON" -m pip install -q -e . ${pip_pkgs[@]+"${pip_pkgs[@]}"})"
  run_ssh "$setup_cmd"
fi

if ((STOP)); then
  # Regex for "<space>-m MODULE" ending there; the [.] keeps it from matching this very command line.
  pattern="[ ]-m ${MODULE//./[.]}( |\$)"
  stop_cmd="if pkill -TERM -u \"\$(id -u)\" -f $(shq "$pattern"); then echo \"\$(hostname): sent SIGTERM\";"
  stop_cmd+=" else echo \"\$(hostname): no $MODULE process\"; fi"
  run_ssh "$stop_cmd"
fi

if ((TRAIN)); then
  train=$(shjoin env "${ENVS[@]}" "$PYTHON" -m "$MODULE" --config="$CONFIG" --workdir="$WORKDIR" \
    ${EXTRA[@]+"${EXTRA[@]}"})
  if ((DETACH)); then
    log="$REMOTE_DIR/train.log"
    remote="$CD && setsid nohup $train >> train.log 2>&1 < /dev/null &"
    remote+=" echo \"\$(hostname): started $MODULE, log: \"$(shq "$log")"
  else
    remote="$CD && $train"
  fi
  run_ssh "$remote"
fi
