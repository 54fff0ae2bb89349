"""launch/: the TPU-pod and Slurm launchers, run with bash in dry-run mode and against fake gcloud/srun.

The fakes record their argv; the remote command that gcloud would send is then run by a local bash
with a fake python3, so the quoting is checked end to end (a value with spaces and a quote arrives
as one argument). Each launcher check is a few bash processes (well under a second in all); the GPU
kit's checks (launch/gpu_kit.py, docs/to_webp.py) take a few seconds.
"""
import json
import os
import shlex
import shutil
import subprocess
import tarfile

import jax
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU = os.path.join(ROOT, "launch", "tpu_pod.sh")
SLURM = os.path.join(ROOT, "launch", "slurm.sbatch")
GPU_RUN = os.path.join(ROOT, "launch", "gpu_shapes_w256.sh")
CPU_STAGES = os.path.join(ROOT, "launch", "cpu_stages23.sh")
CPU_FT = os.path.join(ROOT, "launch", "cpu_stage1_ft.sh")
NOOP_SHARE = os.path.join(ROOT, "launch", "noop_share.sh")
RESULTS_SHIPPED = os.path.join(ROOT, "benchmarks", "results_shipped.sh")
CONFIG = "configs/tiny.py"
NOTE = "--config.note=it's a b"  # a space and a single quote: must arrive as one argument
OVERRIDES = ["--config.batch_size=8", NOTE]

# Records its arguments, NUL-separated, one file per call; for scp also keeps the copied file.
FAKE_GCLOUD = r"""#!/bin/bash
n=$(ls "$FAKE_OUT" | grep -c '^call' || true)
printf '%s\0' "$@" > "$FAKE_OUT/call$n"
if [[ $4 == scp ]]; then cp "${@: -2:1}" "$FAKE_OUT/"; fi
"""
# A stand-in python: each call's arguments, NUL-separated, one line per call.
FAKE_PYTHON = r"""#!/bin/bash
printf '%s\0' "$@" >> "$FAKE_OUT/calls"
printf '\n' >> "$FAKE_OUT/calls"
"""
FAKE_ARGV = r"""#!/bin/bash
printf '%s\0' "$@" > "$FAKE_OUT/argv"
env > "$FAKE_OUT/env"
"""


def _env(**extra):
    """This environment without anything the scripts read (pytest's conftest sets XLA_FLAGS)."""
    drop = {"CONFIG", "WORKDIR", "DRY_RUN", "XLA_FLAGS", "JAX_LOCAL_DEVICE_IDS", "GPUS_PER_NODE", "VENV", "PYTHON",
            "MODULE", "REPO_DIR", "SRUN_ARGS", "NCCL_DEBUG", "XLA_PYTHON_CLIENT_MEM_FRACTION", "UNTIL", "NOOP",
            "KEPT", "S2_STEPS", "BLEND", "S1_DIR", "S3_DIR", "LINEAGE", "RES"}
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("SLURM_")}
    env.update(extra)
    return env


def _bash(script, *args, env=None, cwd=ROOT):
    return subprocess.run(["bash", script, *args], capture_output=True, text=True, env=env or _env(), cwd=cwd,
                          timeout=30)


def _commands(stdout):
    """The printed commands of a dry run, each split as a shell would."""
    return [shlex.split(line) for line in stdout.splitlines() if line.strip() and not line.startswith("#")]


def _option(argv, name):
    values = [a.split("=", 1)[1] for a in argv if a.startswith(name + "=")]
    assert len(values) == 1, (name, argv)
    return values[0]


def _fakes(tmp_path, **scripts):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    return _env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", FAKE_OUT=str(out)), out


def _read_argv(path):
    return path.read_bytes().decode().split("\0")[:-1]


@pytest.mark.parametrize("script", [TPU, SLURM, GPU_RUN, CPU_STAGES, CPU_FT, RESULTS_SHIPPED, NOOP_SHARE])
def test_bash_syntax(script):
    res = subprocess.run(["bash", "-n", script], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
@pytest.mark.parametrize("script", [TPU, SLURM, GPU_RUN, CPU_STAGES, CPU_FT, RESULTS_SHIPPED, NOOP_SHARE])
def test_shellcheck(script):
    res = subprocess.run(["shellcheck", "--shell=bash", script], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("given, missing", [({}, "S1"), ({"S1": "runs/x"}, "OUT")])
def test_cpu_stages_names_a_missing_input_and_runs_nothing(tmp_path, given, missing):
    env = {k: v for k, v in _env(**given).items() if k not in {"S1", "OUT"} - set(given)}
    res = subprocess.run(["bash", CPU_STAGES], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert res.returncode != 0 and f"{missing}: set {missing}" in res.stderr, res.stderr
    assert list(tmp_path.iterdir()) == []


def test_cpu_stages_refuses_an_unknown_until_and_runs_nothing(tmp_path):
    res = subprocess.run(["bash", CPU_STAGES], capture_output=True, text=True, cwd=tmp_path,
                         env=_env(S1="runs/x", OUT="runs/y", UNTIL="stage3"))
    assert res.returncode == 2 and "UNTIL: 'all' or 'blend', not 'stage3'" in res.stderr, res.stderr
    assert list(tmp_path.iterdir()) == []


def test_results_shipped_refuses_a_missing_stage1_folder_and_runs_nothing(tmp_path):
    # only the default folder is restored from git history: a candidate's stage 1 must be there
    res = subprocess.run(["bash", RESULTS_SHIPPED], capture_output=True, text=True, cwd=tmp_path,
                         env=_env(S1_DIR="out/candidate_s1", S3_DIR="out/candidate_release"))
    assert res.returncode == 2 and "S1_DIR: no folder out/candidate_s1" in res.stderr, res.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("given, why", [({}, "OUT: set OUT"),
                                        ({"OUT": "runs/ft", "S1": "out/mine"}, "S1: no folder out/mine")])
def test_cpu_stage1_ft_refuses_a_missing_input_and_runs_nothing(tmp_path, given, why):
    # only the default stage 1 is restored from git history; nothing else is made on a refusal
    env = {k: v for k, v in _env(**given).items() if k not in {"S1", "OUT"} - set(given)}
    res = subprocess.run(["bash", CPU_FT], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert res.returncode != 0 and why in res.stderr, res.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("given, why", [({"STEPS": "0"}, "STEPS: a positive whole number of steps, not '0'"),
                                       ({"STEPS": "4e2"}, "STEPS: a positive whole number of steps, not '4e2'"),
                                       ({"SEED": "-1"}, "SEED: a whole number, not '-1'")])
def test_cpu_stage1_ft_refuses_bad_steps_or_seed_before_restoring_anything(tmp_path, given, why):
    # checked before the default stage 1 is restored from git history into out/
    res = subprocess.run(["bash", CPU_FT], capture_output=True, text=True, cwd=tmp_path,
                         env=_env(OUT="runs/ft", **given))
    assert res.returncode == 2 and why in res.stderr, res.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("script", [CPU_STAGES, RESULTS_SHIPPED])
@pytest.mark.parametrize("share", ["1", "-0.1", "ten", "nan"])
def test_a_bad_noop_share_is_refused_and_nothing_runs(tmp_path, script, share):
    # results_shipped.sh checks it before remaking the lineage's stage 1 (minutes) with it
    res = subprocess.run(["bash", script], capture_output=True, text=True, cwd=tmp_path,
                         env=_env(S1="runs/x", OUT="runs/y", NOOP=share))
    assert res.returncode == 2 and f"NOOP: a share of no-op turns in [0, 1), not '{share}'" in res.stderr, res.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kept", ["-1", "ten", "inf"])
def test_cpu_stages_refuses_a_bad_kept_scale_and_runs_nothing(tmp_path, kept):
    res = subprocess.run(["bash", CPU_STAGES], capture_output=True, text=True, cwd=tmp_path,
                         env=_env(S1="runs/x", OUT="runs/y", KEPT=kept))
    assert res.returncode == 2 and f"KEPT: stage 2's kept_scale, a number >= 0, not '{kept}'" in res.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("steps", ["0", "-5", "1e3", "300 "])
def test_cpu_stages_refuses_a_bad_stage_2_step_count_and_runs_nothing(tmp_path, steps):
    res = subprocess.run(["bash", CPU_STAGES], capture_output=True, text=True, cwd=tmp_path,
                         env=_env(S1="runs/x", OUT="runs/y", S2_STEPS=steps))
    assert res.returncode == 2 and f"S2_STEPS: stage 2's step count, a whole number >= 1, not '{steps}'" in res.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("blend", ["0", "1.5", "half", "nan"])
def test_cpu_stages_refuses_a_bad_blend_share_and_runs_nothing(tmp_path, blend):
    res = subprocess.run(["bash", CPU_STAGES], capture_output=True, text=True, cwd=tmp_path,
                         env=_env(S1="runs/x", OUT="runs/y", BLEND=blend))
    assert res.returncode == 2, res.stderr
    assert f"BLEND: stage 2's share of the distillation teacher, a number in (0, 1], not '{blend}'" in res.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("blend, alpha", [(None, "0.5"), ("0.75", "0.75"), ("1", None), ("1.0", None)])
def test_cpu_stages_blends_as_asked_and_distils_stage_2_itself_at_blend_1(tmp_path, blend, alpha):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(FAKE_PYTHON)
    (bin_dir / "python").chmod(0o755)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "y_pairs.txt").write_text("model g=1\n")  # done already: skipped, and grep finds it
    env = _env(S1="runs/x", OUT="runs/y", FAKE_OUT=str(tmp_path), **({"BLEND": blend} if blend else {}))
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    res = subprocess.run(["bash", CPU_STAGES], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stderr
    calls = [c.strip("\0").split("\0") for c in (tmp_path / "calls").read_text().split("\n") if c]
    blends = [c for c in calls if c[:1] == ["benchmarks/blend_weights.py"]]
    distil = [c for c in calls if c[:2] == ["-m", "anchoredit_jax.distill"]]
    assert len(distil) == 1, calls
    if alpha is None:
        assert blends == [] and "--config.distill.teacher=runs/y_s2" in distil[0]
    else:
        assert len(blends) == 1 and blends[0][blends[0].index("--alpha") + 1] == alpha
        assert "--config.distill.teacher=runs/y_blend" in distil[0]


@pytest.mark.parametrize("kept, want, steps", [(None, "1.0", None), ("8", "8", "1200")])
def test_cpu_stages_passes_kept_and_steps_to_stage_2_only(tmp_path, kept, want, steps):
    # a stand-in python records each call; UNTIL=blend stops after stage 2 and the blend
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(FAKE_PYTHON)
    (bin_dir / "python").chmod(0o755)
    extra = dict({"KEPT": kept} if kept else {}, **({"S2_STEPS": steps} if steps else {}))
    env = _env(S1="runs/x", OUT="runs/y", UNTIL="blend", FAKE_OUT=str(tmp_path), **extra)
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    res = subprocess.run(["bash", CPU_STAGES], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stderr
    calls = [c.strip("\0").split("\0") for c in (tmp_path / "calls").read_text().split("\n") if c]
    train = [c for c in calls if c[:2] == ["-m", "anchoredit_jax.train"]]
    blend = [c for c in calls if c[:1] == ["benchmarks/blend_weights.py"]]
    assert len(train) == 1 and len(blend) == 1, calls
    assert f"--config.stage2.kept_scale={want}" in train[0] and "--config.stage2.ratio_end=0.0" in train[0]
    assert f"--config.num_steps={steps or 300}" in train[0]
    assert not any("kept_scale" in arg or "num_steps" in arg for arg in blend[0])


# ---------------------------------------------------------------------------------------------- TPU


def _tpu_args(workdir="/mnt/shared/run 1"):
    return ["--name", "my-tpu", "--zone=us-central2-b", "--project", "proj", "--config", CONFIG,
            "--workdir", workdir, *OVERRIDES]


def test_tpu_dry_run_prints_the_gcloud_command():
    res = _bash(TPU, *_tpu_args(), "--dry-run", "--", "--verbosity=1")
    assert res.returncode == 0, res.stderr
    (cmd,) = _commands(res.stdout)
    assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-tpu"]
    assert "--worker=all" in cmd and "--zone=us-central2-b" in cmd and "--project=proj" in cmd
    remote = shlex.split(_option(cmd, "--command"))
    assert remote[:3] == ["cd", "anchoredit_jax", "&&"]
    assert remote[remote.index("-m") - 1:] == [
        "python3", "-m", "anchoredit_jax.train", f"--config={CONFIG}", "--workdir=/mnt/shared/run 1", *OVERRIDES,
        "--verbosity=1"]
    assert "PYTHONUNBUFFERED=1" in remote
    assert "# on every worker: cd anchoredit_jax && env" in res.stdout  # readable copy of the remote command


def test_tpu_runs_gcloud_with_exact_arguments(tmp_path):
    env, out = _fakes(tmp_path, gcloud=FAKE_GCLOUD)
    res = _bash(TPU, *_tpu_args(), "--env", "GREETING=hello world", env=env)
    assert res.returncode == 0, res.stderr
    argv = _read_argv(out / "call0")
    assert argv[:5] == ["compute", "tpus", "tpu-vm", "ssh", "my-tpu"] and "--worker=all" in argv
    # What every worker's shell would do with --command: run it here, with a fake python3.
    env, out = _fakes(tmp_path, python3=FAKE_ARGV)
    (tmp_path / "anchoredit_jax").mkdir()
    res = subprocess.run(["bash", "-c", _option(argv, "--command")], cwd=tmp_path, env=env, capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stderr
    assert _read_argv(out / "argv") == ["-m", "anchoredit_jax.train", f"--config={CONFIG}",
                                        "--workdir=/mnt/shared/run 1", *OVERRIDES]
    assert "GREETING=hello world\n" in (out / "env").read_text()


def test_tpu_setup_copies_the_tree_and_installs(tmp_path):
    res = _bash(TPU, *_tpu_args(), "--setup", "--dry-run")
    assert res.returncode == 0, res.stderr
    scp, setup, train = _commands(res.stdout)
    assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and "--worker=all" in scp
    assert scp[-1] == "my-tpu:anchoredit_jax_src.tar.gz"
    setup_remote = _option(setup, "--command")
    assert "--worker=all" in setup and "tar -xzf anchoredit_jax_src.tar.gz" in setup_remote
    assert shlex.split(setup_remote)[-8:] == ["python3", "-m", "pip", "install", "-q", "-e", ".", "jax[tpu]"]
    assert "anchoredit_jax.train" in _option(train, "--command")
    if subprocess.run(["git", "-C", ROOT, "rev-parse"], capture_output=True).returncode:
        pytest.skip("not a git checkout: the real setup packs git-visible files")
    env, out = _fakes(tmp_path, gcloud=FAKE_GCLOUD)
    res = _bash(TPU, "--name", "t", "--zone", "z", "--setup-only", env=env)
    assert res.returncode == 0, res.stderr
    assert len(list(out.glob("call*"))) == 2  # scp, then the remote install; no training
    with tarfile.open(out / "anchoredit_jax_src.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"setup.py", "anchoredit_jax/train.py", "launch/tpu_pod.sh", CONFIG} <= names
    assert not any(n.startswith((".git/", ".venv/")) or "__pycache__" in n for n in names)


def test_tpu_stop_and_detach():
    res = _bash(TPU, "--name", "t", "--zone", "z", "--stop", "--dry-run")
    assert res.returncode == 0, res.stderr
    (cmd,) = _commands(res.stdout)
    assert "--worker=all" in cmd
    assert "pkill -TERM" in _option(cmd, "--command") and "anchoredit_jax[.]train" in _option(cmd, "--command")
    res = _bash(TPU, *_tpu_args(), "--detach", "--dry-run")
    assert res.returncode == 0, res.stderr
    remote = _option(_commands(res.stdout)[0], "--command")
    assert "setsid nohup env" in remote and ">> train.log 2>&1 < /dev/null &" in remote


@pytest.mark.parametrize("drop, message", [
    ("--name", "--name is required"), ("--zone", "--zone is required"),
    ("--config", "--config is required"), ("--workdir", "--workdir is required")])
def test_tpu_missing_argument(drop, message):
    args = _tpu_args()
    if drop == "--zone":
        args = [a for a in args if not a.startswith("--zone")]
    else:
        i = args.index(drop)
        del args[i:i + 2]
    res = _bash(TPU, *args, "--dry-run")
    assert res.returncode == 2 and message in res.stderr and res.stdout == ""


@pytest.mark.parametrize("args, message", [
    (["--name"], "--name needs a value"),
    (["--name", "--zone", "z"], "--name needs a value"),
    (["--bogus=1"], "unknown option '--bogus'"),
    (["stray"], "unexpected argument 'stray'"),
    (["--name", "t", "--zone", "z", "--config", CONFIG, "--workdir", "gs://bucket/run"], "gcsfuse"),
    (["--name", "t", "--zone", "z", "--env", "1X=2"], "--env wants KEY=VALUE"),
])
def test_tpu_bad_arguments(args, message):
    res = _bash(TPU, *args, "--dry-run")
    assert res.returncode == 2 and message in res.stderr, res.stderr


def test_tpu_help():
    res = _bash(TPU, "--help")
    assert res.returncode == 0 and "Usage:" in res.stdout and "--dry-run" in res.stdout and "--setup" in res.stdout


# -------------------------------------------------------------------------------------------- Slurm


def test_slurm_header():
    header = [line.split(None, 1)[1].strip() for line in open(SLURM) if line.startswith("#SBATCH")]
    for want in ("--ntasks-per-node=1", "--gpus-per-node=8", "--signal=TERM@300"):
        assert want in header
    assert {h.split("=")[0] for h in header} >= {"--nodes", "--cpus-per-task", "--time", "--output"}


def test_slurm_dry_run_positional():
    res = _bash(SLURM, CONFIG, "/shared/run 1", *OVERRIDES, env=_env(DRY_RUN="1"))
    assert res.returncode == 0, res.stderr
    cd, *exports, srun = _commands(res.stdout)
    assert cd == ["cd", ROOT]
    exported = dict(e[1].split("=", 1) for e in exports)
    assert exported["JAX_LOCAL_DEVICE_IDS"] == "0,1,2,3,4,5,6,7" and exported["NCCL_DEBUG"] == "WARN"
    assert exported["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.90"
    assert srun[:3] == ["srun", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
    assert srun[srun.index("-m") - 1:] == ["python3", "-m", "anchoredit_jax.train", f"--config={CONFIG}",
                                           "--workdir=/shared/run 1", *OVERRIDES]


def test_slurm_dry_run_environment():
    env = _env(DRY_RUN="1", CONFIG=CONFIG, WORKDIR="/w", SLURM_JOB_NUM_NODES="4", SLURM_CPUS_PER_TASK="16",
               SLURM_GPUS_PER_NODE="h100:4", XLA_FLAGS="--xla_dump_to=/tmp/x", VENV="/opt/venv", NCCL_DEBUG="INFO")
    res = _bash(SLURM, "--", "--config.seed=3", env=env)
    assert res.returncode == 0, res.stderr
    cd, *exports, srun = _commands(res.stdout)
    exported = dict(e[1].split("=", 1) for e in exports)
    assert exported["JAX_LOCAL_DEVICE_IDS"] == "0,1,2,3" and exported["NCCL_DEBUG"] == "INFO"
    assert exported["XLA_FLAGS"] == "--xla_gpu_enable_latency_hiding_scheduler=true --xla_dump_to=/tmp/x"
    assert "--nodes=4" in srun and "--cpus-per-task=16" in srun
    assert srun[srun.index("-m") - 1:] == ["/opt/venv/bin/python", "-m", "anchoredit_jax.train", f"--config={CONFIG}",
                                           "--workdir=/w", "--config.seed=3"]


def test_slurm_runs_srun_with_exact_arguments(tmp_path):
    env, out = _fakes(tmp_path, srun=FAKE_ARGV)
    env.update(SLURM_JOB_ID="42", SLURM_SUBMIT_DIR=ROOT, SLURM_JOB_NUM_NODES="2")
    res = _bash(SLURM, CONFIG, "/shared/run 1", *OVERRIDES, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    argv = _read_argv(out / "argv")
    assert argv == ["--ntasks-per-node=1", "--kill-on-bad-exit=1", "--nodes=2", "python3", "-m",
                    "anchoredit_jax.train", f"--config={CONFIG}", "--workdir=/shared/run 1", *OVERRIDES]
    assert "JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7\n" in (out / "env").read_text()
    assert f"PWD={ROOT}\n" in (out / "env").read_text()  # runs in the submit directory


@pytest.mark.parametrize("args, extra, message", [
    ([], {}, "no config"),
    ([CONFIG], {}, "no workdir"),
    (["--config.seed=1"], {"WORKDIR": "/w"}, "no config"),
    (["configs/does_not_exist.py", "/w"], {}, "does not exist"),
    ([CONFIG, "/w"], {"DRY_RUN": "0"}, "not inside a Slurm allocation"),
])
def test_slurm_errors(args, extra, message):
    res = _bash(SLURM, *args, env=_env(**{"DRY_RUN": "1", **extra}))
    assert res.returncode == 2 and message in res.stderr and "srun" not in res.stdout, res.stderr


def test_slurm_help():
    res = _bash(SLURM, "--help")
    assert res.returncode == 0 and "Usage:" in res.stdout and "DRY_RUN=1" in res.stdout


def test_gpu_kit_counts_what_would_travel_once(tmp_path, monkeypatch):
    """The device copies git's tracked and untracked-not-ignored files plus the carried folders: a
    carried folder that git does not ignore must be counted once, and the kit ignores it locally."""
    import sys
    sys.path.insert(0, os.path.join(ROOT, "launch"))
    import gpu_kit

    repo = tmp_path / "repo"
    (repo / ".gpu").mkdir(parents=True)
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(git + ["init", "-q", str(repo)], check=True)
    for path in ("tracked.bin", "untracked.bin", ".gpu/kit.bin"):
        (repo / path).write_bytes(b"\0" * 2**20)
    subprocess.run(git + ["add", "tracked.bin"], cwd=repo, check=True)
    subprocess.run(git + ["commit", "-qm", "x"], cwd=repo, check=True)
    monkeypatch.setattr(gpu_kit, "ROOT", str(repo))
    assert gpu_kit.travel_mib([]) == pytest.approx(3.0)  # .gpu travels as an untracked folder
    assert gpu_kit.travel_mib([".gpu"]) == pytest.approx(3.0)  # carried: still once
    gpu_kit.ignore_locally(".gpu", ".whl")
    gpu_kit.ignore_locally(".gpu")  # idempotent
    assert (repo / ".git" / "info" / "exclude").read_text().split().count("/.gpu/") == 1
    assert gpu_kit.travel_mib([]) == pytest.approx(2.0) and gpu_kit.travel_mib([".gpu"]) == pytest.approx(3.0)


def test_docs_pictures_go_to_lossless_webp_and_markdown_follows(tmp_path, monkeypatch):
    """docs/to_webp.py replaces a PNG only by a pixel-identical, smaller WebP and rewrites the
    Markdown that names it (from the root or relative to the file), nothing else."""
    import sys

    from PIL import Image
    sys.path.insert(0, os.path.join(ROOT, "docs"))
    import to_webp

    from anchoredit_jax.data.contact_sheet import save_image

    repo = tmp_path / "repo"
    (repo / "docs" / "results").mkdir(parents=True)
    rng = np.random.default_rng(0)
    sheet = np.repeat(np.repeat(rng.integers(0, 255, (16, 24, 3), np.uint8), 8, 0), 8, 1)  # blocky, like a sheet
    Image.fromarray(sheet).save(repo / "docs" / "results" / "sheet.png")
    noise = rng.integers(0, 255, (32, 32, 3), np.uint8)  # incompressible: WebP is no smaller
    Image.fromarray(noise).save(repo / "docs" / "noise.png")
    (repo / "README.md").write_text("![a](docs/results/sheet.png) `out/sheet.png` docs/noise.png\n")
    (repo / "docs" / "notes.md").write_text("[s](results/sheet.png) (docs/results/sheet.png.bak)\n")
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(git + ["init", "-q", str(repo)], check=True)
    subprocess.run(git + ["add", "."], cwd=repo, check=True)
    monkeypatch.setattr(to_webp, "ROOT", str(repo))
    assert to_webp.main([]) == 0
    webp = repo / "docs" / "results" / "sheet.webp"
    assert not (repo / "docs" / "results" / "sheet.png").exists() and (repo / "docs" / "noise.png").exists()
    with Image.open(webp) as im:
        assert np.array_equal(np.asarray(im.convert("RGB")), sheet)
    assert (repo / "README.md").read_text() == "![a](docs/results/sheet.webp) `out/sheet.png` docs/noise.png\n"
    assert (repo / "docs" / "notes.md").read_text() == "[s](results/sheet.webp) (docs/results/sheet.png.bak)\n"
    # the library's writers give the same lossless pictures for a .webp path (PIL's default WebP is lossy)
    save_image(Image.fromarray(sheet), str(tmp_path / "direct.webp"))
    with Image.open(tmp_path / "direct.webp") as im:
        assert np.array_equal(np.asarray(im.convert("RGB")), sheet)


def test_docs_pictures_go_to_lossy_webp_only_where_small_and_close(tmp_path, monkeypatch):
    """--lossy replaces a picture (WebP in place, PNG renamed and its Markdown rewritten) only where
    the lossy bytes are smaller by the ratio asked and within the PSNR asked; the rest is untouched."""
    import sys

    from PIL import Image
    sys.path.insert(0, os.path.join(ROOT, "docs"))
    import to_webp

    repo = tmp_path / "repo"
    (repo / "docs").mkdir(parents=True)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:128, 0:192]
    smooth = np.stack([127 + 100 * np.sin(x / 9.0 + c) * np.cos(y / 13.0) + rng.normal(0, 3, (128, 192))
                       for c in range(3)], -1).clip(0, 255).astype(np.uint8)  # ~37 dB at quality 90
    Image.fromarray(smooth).save(repo / "docs" / "sheet.webp", lossless=True)
    Image.fromarray(smooth).save(repo / "docs" / "other.png")
    noise = rng.integers(0, 255, (32, 32, 3), np.uint8)  # lossy shrinks it but far from it (~13 dB)
    Image.fromarray(noise).save(repo / "docs" / "noise.webp", lossless=True)
    (repo / "README.md").write_text("![a](docs/other.png) docs/noise.webp\n")
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(git + ["init", "-q", str(repo)], check=True)
    subprocess.run(git + ["add", "."], cwd=repo, check=True)
    monkeypatch.setattr(to_webp, "ROOT", str(repo))
    noise_bytes = (repo / "docs" / "noise.webp").read_bytes()
    lossless_size = (repo / "docs" / "sheet.webp").stat().st_size
    assert to_webp.main(["--lossy", "90", "--min-psnr", "50"]) == 0  # too strict: nothing changes
    assert (repo / "docs" / "sheet.webp").stat().st_size == lossless_size and (repo / "docs" / "other.png").exists()
    assert to_webp.main(["--lossy", "90"]) == 0
    assert (repo / "docs" / "noise.webp").read_bytes() == noise_bytes
    assert (repo / "docs" / "sheet.webp").stat().st_size < 0.8 * lossless_size
    assert not (repo / "docs" / "other.png").exists()
    for name in ("sheet.webp", "other.webp"):
        with Image.open(repo / "docs" / name) as im:
            back = np.asarray(im.convert("RGB"), np.float64)
        assert 10 * np.log10(255.0 ** 2 / np.mean((back - smooth) ** 2)) > 35
    assert (repo / "README.md").read_text() == "![a](docs/other.webp) docs/noise.webp\n"
    assert to_webp.main([]) == 0  # other.png, renamed, is still in git's index: passed over, not opened
    with pytest.raises(SystemExit):
        to_webp.main(["--lossy", "0"])


def test_int8_groups_error_is_at_most_half_a_step_and_compact_expand_round_trips():
    from anchoredit_jax import quantize

    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 128)).astype(np.float32) * np.array([1.0, 1e-3, 50.0])[:, None]  # rows of any scale
    q, scale = quantize.int8_groups(x, 64)
    assert q.dtype == np.int8 and scale.shape == (3, 2) and scale.dtype == np.float16
    step = np.repeat(scale.astype(np.float32), 64, axis=-1)
    assert np.all(np.abs(quantize.from_int8_groups(q, scale) - x) <= 0.5 * step + 1e-7)
    assert np.all(np.abs(quantize.from_int8_groups(q, scale) - x) <= 0.01 * np.abs(x).max(-1, keepdims=True))
    with pytest.raises(ValueError, match="multiple of the group size"):
        quantize.int8_groups(x[:, :100], 64)
    flat = {"w": x, "b": rng.normal(size=(5,)).astype(np.float32), "odd": rng.normal(size=(4, 10))}
    small = quantize.compact(flat)
    assert sorted(small) == ["b", "odd", "w.int8", "w.scale"]
    back = quantize.expand(small)
    assert sorted(back) == sorted(flat) and back["b"] is small["b"] and np.array_equal(back["b"], flat["b"])
    np.testing.assert_allclose(back["w"], x, atol=float(np.abs(x).max()) / 127)


def test_gpu_kit_carries_stage1_weights_as_int8_and_expands_them_to_a_release(tmp_path, monkeypatch):
    """`gpu_kit.py --init` (here on the shipped release) writes a byte a weight (bfloat16 in orbax: 1.5);
    `--expand` on the device gives a release whose weights are the originals within half an int8
    step, with the tree's VAE, that init_from loads; it never writes over a folder."""
    import sys
    sys.path.insert(0, os.path.join(ROOT, "launch"))
    import gpu_kit

    from anchoredit_jax import checkpointing, release

    src = os.path.join(ROOT, "weights", "shapes_stage3")
    kit, out = str(tmp_path / "init"), str(tmp_path / "expanded")
    gpu_kit.build_init(src, kit)
    n = int(json.load(open(os.path.join(src, "release.json")))["dit_params"])
    assert os.path.getsize(os.path.join(kit, "dit.safetensors")) < 1.06 * n  # a byte a weight, and a little
    assert os.path.getsize(os.path.join(kit, "dit.safetensors")) < 0.7 * release.folder_bytes(os.path.join(src, "dit"))
    gpu_kit.expand_init(kit, out)
    config, mcfg, got = checkpointing.load_trained(out)
    _, mcfg0, want = checkpointing.load_trained(src)
    assert mcfg == mcfg0 and os.path.samefile(config.vae.workdir, os.path.join(src, "vae"))
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
        assert np.linalg.norm(a - b) <= 0.006 * np.linalg.norm(a)
    with pytest.raises(SystemExit, match="exists"):
        gpu_kit.expand_init(kit, out)


def test_the_tracked_tree_leaves_room_for_the_gpu_kit():
    """What a lent GPU's run carries must fit in 64 MiB with the whole working tree: the kit of
    launch/README.md (compact MiniLM 11.6 MiB, int8 stage-1 weights 9.2 MiB, wheels 4.4 MiB, as
    gpu_kit.py printed them on 2026-12-05) leaves the tracked tree 38.8 MiB. A new picture in docs/
    goes through docs/to_webp.py; results that do not fit belong outside the tree."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True).stdout
    paths = [os.path.join(ROOT, f) for f in files.decode().split("\0") if f]
    tree = sum(os.path.getsize(p) for p in paths if os.path.isfile(p)) / 2**20
    assert tree <= 64 - (11.6 + 9.2 + 4.4), f"tracked tree {tree:.1f} MiB: the GPU kit would not fit (launch/README.md)"
    assert not [p for p in paths if p.endswith(".png") and os.sep + "docs" + os.sep in p], "docs/ pictures go as WebP"


def test_gpu_kit_names_a_missing_source_in_one_line(tmp_path, monkeypatch, capsys):
    import sys
    sys.path.insert(0, os.path.join(ROOT, "launch"))
    import gpu_kit

    monkeypatch.setattr(gpu_kit, "ROOT", str(tmp_path))
    assert gpu_kit.main(["--expand", str(tmp_path / "no_kit"), str(tmp_path / "out")]) == 1
    assert gpu_kit.main(["--init", str(tmp_path / "no_run"), "--no-wheels"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") for line in err) and "no_run" in err[1]
    assert not (tmp_path / "out").exists() and not (tmp_path / ".gpu").exists()
