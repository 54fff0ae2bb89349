"""The edit CLI (anchoredit_jax.edit) on a 2-step checkpoint: batch, interactive, image policy, errors.

The CLI runs in-process through `main(argv)`; the checkpoint is conftest's shared 2-step run.
"""
import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from anchoredit_jax import edit
from anchoredit_jax.data.shapes_edit import generate_sequence
from runs import traced_steps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEQ = generate_sequence(3, 3, 64, split="heldout_seeds")
LONG = "please " + " ".join(f"paint the number {i} circle bright red" for i in range(8))  # > 24 tokens


pytestmark = pytest.mark.usefixtures("cache_small_programs")  # conftest.py


@pytest.fixture(scope="module")
def ckpt(tiny_stage1_run):
    return tiny_stage1_run  # conftest.py: a 2-step stage-1 run shared with other modules


@pytest.fixture(scope="module")
def source_png(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("img") / "source.png")
    Image.fromarray(SEQ.source).save(path)
    return path


def _run(capsys, *argv):
    rc = edit.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _read(path):
    with open(path, "rb") as f:
        return f.read()


@pytest.fixture(scope="module")
def batch_runs(ckpt, source_png, tmp_path_factory):
    """The same batch edit twice (same seed) into two folders."""
    outs = [str(tmp_path_factory.mktemp("batch") / name) for name in ("a", "b")]
    for out in outs:
        assert edit.main(["--checkpoint", ckpt, "--image", source_png, "--out", out,
                          "--instructions", *SEQ.instructions]) == 0
    return outs


def test_batch_outputs_and_log(batch_runs):
    out = batch_runs[0]
    names = ["turn_00_source.png", "turn_01.png", "turn_02.png", "turn_03.png"]
    for name in names + ["contact_sheet.png", "log.json"]:
        assert os.path.isfile(os.path.join(out, name)), name
    for name in names:
        img = Image.open(os.path.join(out, name))
        assert (img.size, img.mode) == ((64, 64), "RGB")
    np.testing.assert_array_equal(np.asarray(Image.open(os.path.join(out, names[0]))), SEQ.source)
    with open(os.path.join(out, "log.json")) as f:
        log = json.load(f)
    assert [t["instruction"] for t in log["turns"]] == SEQ.instructions
    assert [t["image"] for t in log["turns"]] == names[1:]
    assert log["seed"] == 0 and log["step"] == 2 and log["settings"]["window"] == 4 and log["settings"]["anchor"]
    assert log["settings"]["steps"] == 4 and log["settings"]["sampler"] == "euler"  # from the config's val section
    assert log["settings"]["anchor_weight"] == 1.0  # the memory as trained
    assert log["turn_fn_cache_size"] == 1  # one compiled program for all turns
    t = log["timings"]
    assert t["first_turn_s_incl_compile"] > 0 and t["later_turns"] == 2 and t["later_turn_median_s"] > 0
    print(f"batch timings: {t}")


def test_same_seed_same_bytes(batch_runs):
    a, b = batch_runs
    for name in ("turn_00_source.png", "turn_01.png", "turn_02.png", "turn_03.png", "contact_sheet.png"):
        assert _read(os.path.join(a, name)) == _read(os.path.join(b, name)), name
    # the turns really are generated (not copies of the source)
    assert _read(os.path.join(a, "turn_01.png")) != _read(os.path.join(a, "turn_00_source.png"))


def test_odd_rgba_image_options_and_long_instruction(ckpt, tmp_path, capsys):
    rgba = np.zeros((23, 37, 4), np.uint8)  # transparent, with an opaque red square in the middle
    rgba[8:15, 15:22] = (255, 0, 0, 255)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "odd.png")
    out = tmp_path / "out"
    rc, _, err = _run(capsys, "--checkpoint", ckpt, "--weights", "params", "--image", tmp_path / "odd.png",
                      "--out", out, "--no-anchor", "--window", 2, "--sampler", "midpoint", "--steps", 2,
                      "--guidance", 2.0, "--shift", 2.0, "--seed", 5, "--instructions", LONG, "add a star", LONG)
    assert rc == 0, err
    assert err.count("truncated") == 1, err  # shown once, although the instruction comes twice
    src = np.asarray(Image.open(out / "turn_00_source.png"))
    assert src.shape == (64, 64, 3)
    assert (src[0, 0] == 255).all() and (src[-1, -1] == 255).all()  # alpha over white, cover + centre crop
    assert src[32, 32, 0] > 200 and src[32, 32, 1:].max() < 60
    for k in (1, 2, 3):
        assert Image.open(out / f"turn_{k:02d}.png").size == (64, 64)
    log = json.loads((out / "log.json").read_text())
    assert log["input_image"] == {"size": [37, 23], "mode": "RGBA"}
    assert log["settings"] == dict(window=2, anchor=False, steps=2, sampler="midpoint", guidance=2.0, shift=2.0,
                                   anchor_weight=None, anchor_gate=None, latest_weight=1.0,  # no anchor to weigh
                                   edit_region=0.0, outside_mix=0.0)
    assert log["seed"] == 5 and log["weights"] == "params" and len(log["turns"]) == 3
    assert len(log["warnings"]) == 1 and log["turn_fn_cache_size"] == 1


def test_interactive_undo_branch(ckpt, source_png, batch_runs, tmp_path, capsys, monkeypatch):
    a, b = SEQ.instructions[:2]
    script = f"{a}\n{b}\n:undo\n:back 1\n   \nturn the background green\n:history\n:quit\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(script))
    out = tmp_path / "session"
    rc, stdout, err = _run(capsys, "--checkpoint", ckpt, "--image", source_png, "--out", out, "--interactive")
    assert rc == 0, err
    hist = json.loads((out / "history.json").read_text())
    nodes = {n["id"]: n for n in hist["nodes"]}
    assert {i: n["parent"] for i, n in nodes.items()} == {0: None, 1: 0, 2: 1, 3: 1}
    assert [nodes[i]["instruction"] for i in range(4)] == [None, a, b, "turn the background green"]
    assert [nodes[i]["depth"] for i in range(4)] == [0, 1, 2, 2]
    assert hist["current"] == 3 and hist["turn_fn_cache_size"] == 1  # undo/branch reuse the compiled turn
    for n in nodes.values():
        assert Image.open(out / n["image"]).size == (64, 64)
    assert "keep the image as it is" in stdout  # the blank line was refused, the session went on
    assert "[3] 'turn the background green'" in stdout and "<- current" in stdout
    # a path of the tree is the batch run of its instructions, bit for bit
    for k in (1, 2):
        assert _read(out / f"node_{k:03d}.png") == _read(os.path.join(batch_runs[0], f"turn_{k:02d}.png"))
    assert (out / "contact_sheet.png").is_file() and (out / "log.json").is_file()


def test_interactive_eof_and_overwrite_keeps_user_files(ckpt, source_png, tmp_path, capsys, monkeypatch):
    out = tmp_path / "s"
    out.mkdir()
    (out / "mine.txt").write_text("precious")
    (out / "node_007.png").write_bytes(b"stale")  # ours, from an earlier longer session: removed
    monkeypatch.setattr("sys.stdin", io.StringIO(":bogus\n:back 9\n"))  # then EOF
    rc, stdout, err = _run(capsys, "--checkpoint", ckpt, "--image", source_png, "--out", out, "--interactive",
                           "--overwrite", "--instructions", SEQ.instructions[0])
    assert rc == 0, err
    assert "unknown command" in stdout and "no turn 9" in stdout
    hist = json.loads((out / "history.json").read_text())
    assert [n["parent"] for n in hist["nodes"]] == [None, 0] and hist["current"] == 1
    assert sorted(os.listdir(out)) == ["contact_sheet.png", "history.json", "log.json", "mine.txt", "node_000.png",
                                       "node_001.png"]
    assert (out / "mine.txt").read_text() == "precious"


def test_help_states_image_policy(capsys):
    rc, out, _ = _run(capsys, "--help")
    assert rc == 0 and "centre-cropped" in out and "alpha" in out


def _bad_checkpoints(ckpt, tmp):
    empty = tmp / "empty"
    empty.mkdir()
    no_ckpt = tmp / "no_ckpt"
    no_ckpt.mkdir()
    shutil.copy(os.path.join(ckpt, "config.json"), no_ckpt / "config.json")
    misfit = tmp / "misfit"
    misfit.mkdir()
    cfg = json.loads(open(os.path.join(ckpt, "config.json")).read())
    cfg["model"]["ffn_dim"] = 64  # trained with 128
    (misfit / "config.json").write_text(json.dumps(cfg))
    os.symlink(os.path.join(ckpt, "checkpoints"), misfit / "checkpoints")
    return {"empty": (empty, "not a training workdir"), "missing": (tmp / "nope", "no such directory"),
            "no_ckpt": (no_ckpt, "holds no checkpoint"), "misfit": (misfit, "params do not fit its config.json")}


def test_errors_are_one_clear_line(ckpt, source_png, tmp_path, capsys):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(_read(source_png)[:200])
    Image.fromarray(np.zeros((8, 8), np.uint16)).save(tmp_path / "deep.png")  # 16-bit: refused
    user_dir = tmp_path / "user"
    user_dir.mkdir()
    (user_dir / "mine.txt").write_text("precious")
    ok = ["--checkpoint", ckpt, "--image", source_png]
    cases = {
        "missing image": (["--checkpoint", ckpt, "--image", tmp_path / "nope.png", "--instructions", "x"], "not found"),
        "corrupt image": (["--checkpoint", ckpt, "--image", corrupt, "--instructions", "x"], "cannot be read"),
        "truncated image": (["--checkpoint", ckpt, "--image", truncated, "--instructions", "x"], "corrupt"),
        "16-bit image": (["--checkpoint", ckpt, "--image", tmp_path / "deep.png", "--instructions", "x"],
                         "unsupported mode"),
        "no instructions": (ok, "no instructions"),
        "empty instruction": (ok + ["--instructions", "add a hat", "  "], "keep the image as it is"),
        "out dir not empty": (ok + ["--instructions", "x", "--out", user_dir], "--overwrite"),
    }
    for name, (ckpt_dir, msg) in _bad_checkpoints(ckpt, tmp_path).items():
        cases[f"checkpoint {name}"] = (["--checkpoint", ckpt_dir, "--image", source_png, "--instructions", "x"], msg)
    for name, (argv, msg) in cases.items():
        out = tmp_path / f"out_{name.replace(' ', '_')}"
        if "--out" not in argv:
            argv = argv + ["--out", out]
        rc, _, err = _run(capsys, *argv)
        assert rc == 1, (name, err)
        assert msg in err and err.count("error:") == 1 and "Traceback" not in err, (name, err)
        assert not out.exists(), name  # nothing written on error
        print(f"{name}: {err.strip().splitlines()[-1]}")
    assert sorted(os.listdir(user_dir)) == ["mine.txt"] and (user_dir / "mine.txt").read_text() == "precious"
    rc, _, err = _run(capsys, *ok, "--instructions", "x", "--out", tmp_path / "o", "--window", 0)
    assert rc == 2 and "--window must be >= 1" in err


def test_module_entry_point_on_one_device(ckpt, source_png, tmp_path):
    """`python -m anchoredit_jax.edit` in a fresh 1-device process, as a user runs it after training."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "anchoredit_jax.edit", "--checkpoint", ckpt, "--image", source_png,
                           "--out", str(out), "--instructions", SEQ.instructions[0]],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert Image.open(out / "turn_01.png").size == (64, 64)


# ----------------------------------------------------------------------------- --method mcie (issue #10)
def test_mcie_batch_same_seed_same_bytes_and_log(ckpt, source_png, tmp_path, capsys):
    outs = [tmp_path / name for name in ("a", "b")]
    for out in outs:
        rc, _, err = _run(capsys, "--checkpoint", ckpt, "--image", source_png, "--out", out, "--method", "mcie",
                          "--steps", 2, "--instructions", *SEQ.instructions[:2])
        assert rc == 0, err
    for name in ("turn_01.png", "turn_02.png", "contact_sheet.png"):
        assert _read(outs[0] / name) == _read(outs[1] / name), name
    assert _read(outs[0] / "turn_01.png") != _read(outs[0] / "turn_00_source.png")
    log = json.loads((outs[0] / "log.json").read_text())
    assert log["method"] == "mcie" and log["turn_fn_cache_size"] == 1 and len(log["turns"]) == 2
    # MCIE alone: previous frame only; the paper's solver; guidance from the config
    assert log["settings"] == dict(window=1, anchor=False, steps=2, sampler="fireflow", guidance=3.0, shift=1.0,
                                   anchor_weight=None, anchor_gate=None, latest_weight=None, edit_region=None,
                                   outside_mix=None)
    assert log["mcie"]["gamma"] == 0.5 and log["mcie"]["eta"] == 0.9 and log["mcie"]["lam"] == 0.7
    # differs from AnchorEdit with the same seed
    rc, _, err = _run(capsys, "--checkpoint", ckpt, "--image", source_png, "--out", tmp_path / "ae", "--steps", 2,
                      "--sampler", "fireflow", "--instructions", *SEQ.instructions[:2])
    assert rc == 0, err
    assert _read(tmp_path / "ae" / "turn_01.png") != _read(outs[0] / "turn_01.png")


def test_mcie_with_anchor_memory_interactive(ckpt, source_png, tmp_path, capsys, monkeypatch):
    a, b = SEQ.instructions[:2]
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{b}\n:undo\n{b}\n:quit\n"))
    out = tmp_path / "session"
    rc, stdout, err = _run(capsys, "--checkpoint", ckpt, "--image", source_png, "--out", out, "--interactive",
                           "--method", "mcie", "--window", 2, "--steps", 2, "--sampler", "midpoint", "--eta", 0.5,
                           "--highlight-ranks", 0.0, 0.5, "--instructions", a)
    assert rc == 0, err
    hist = json.loads((out / "history.json").read_text())
    assert [n["parent"] for n in hist["nodes"]] == [None, 0, 1, 1] and hist["turn_fn_cache_size"] == 1
    assert hist["settings"]["window"] == 2 and hist["settings"]["anchor"] and hist["method"] == "mcie"
    assert hist["mcie"]["eta"] == 0.5 and hist["mcie"]["highlight_ranks"] == [0.0, 0.5]
    assert _read(out / "node_002.png") == _read(out / "node_003.png")  # the branch from the same state, same seed


def test_mcie_flag_errors(ckpt, source_png, tmp_path, capsys):
    base = ["--checkpoint", ckpt, "--image", source_png, "--out", tmp_path / "o", "--instructions", "x"]
    for extra, msg in ((["--gamma", 0.3], "--gamma is an MCIE option; add --method mcie"),
                       (["--method", "mcie", "--sampler", "consistency"], "--sampler must be one of"),
                       (["--method", "mcie", "--eta", 2.0], "eta must be in [0, 1]"),
                       (["--method", "mcie", "--highlight-ranks", 0.9, 0.1], "highlight_ranks")):
        rc, _, err = _run(capsys, *base, *extra)
        assert rc == 2 and msg in err, (extra, err)
    assert not (tmp_path / "o").exists()
    rc, out, _ = _run(capsys, "--help")
    assert rc == 0 and "--method {anchoredit,mcie}" in out and "--highlight-in" in out
    from anchoredit_jax import sampler
    assert all(m in out for m in sampler.METHODS)  # --sampler's choices follow sampler.METHODS


def test_consistency_sampler_from_the_cli(ckpt, source_png, batch_runs, tmp_path, capsys):
    """A distilled model's sampler: 4 consistency steps, guidance 1 (one branch); reproducible, and
    different from the Euler run of the same checkpoint and seed."""
    outs = [str(tmp_path / n) for n in ("a", "b")]
    for out in outs:
        rc, _, err = _run(capsys, "--checkpoint", ckpt, "--image", source_png, "--out", out, "--sampler", "consistency",
                          "--steps", 4, "--guidance", 1, "--instructions", *SEQ.instructions)
        assert rc == 0, err
    with open(os.path.join(outs[0], "log.json")) as f:
        settings = json.load(f)["settings"]
    assert (settings["sampler"], settings["steps"], settings["guidance"]) == ("consistency", 4, 1.0)
    for name in ("turn_01.png", "turn_03.png"):
        assert _read(os.path.join(outs[0], name)) == _read(os.path.join(outs[1], name))
    assert _read(os.path.join(outs[0], "turn_01.png")) != _read(os.path.join(batch_runs[0], "turn_01.png"))


def test_profile_traces_the_turns_after_the_first(ckpt, source_png, batch_runs, tmp_path, capsys):
    """--profile: turns 2 and 3 in OUT/profile, the same bytes as without it; refused where it cannot apply."""
    out = tmp_path / "p"
    rc, _, err = _run(capsys, "--checkpoint", ckpt, "--image", source_png, "--out", out, "--profile",
                      "--instructions", *SEQ.instructions)
    assert rc == 0, err
    assert traced_steps(out, "turn") == [[2, 3]] and "profile of turns 2-3" in err
    for name in ("turn_01.png", "turn_03.png"):
        assert _read(out / name) == _read(os.path.join(batch_runs[0], name))
    for argv in (["--instructions", "add a hat"], ["--interactive"]):
        rc, _, err = _run(capsys, "--checkpoint", ckpt, "--image", source_png, "--out", tmp_path / "q", "--profile",
                          *argv)
        assert rc == 2 and "--profile traces the batch turns after the first" in err
    assert not (tmp_path / "q").exists()


def test_python_editor_matches_the_cli_and_branches(ckpt, source_png, batch_runs):
    """anchoredit_jax.Editor: the CLI's pixels for the same checkpoint and seed; states branch and replay."""
    from anchoredit_jax import EditError, Editor
    ed = Editor(ckpt)
    cli = [np.asarray(Image.open(os.path.join(batch_runs[0], f"turn_{k:02d}.png"))) for k in (1, 2, 3)]
    images = ed.edit(source_png, SEQ.instructions)
    assert len(images) == 3 and all(np.array_equal(a, b) for a, b in zip(images, cli))
    s0 = ed.start(Image.open(source_png))  # a PIL image, as the path
    s1 = ed.turn(s0, SEQ.instructions[0])
    other = ed.turn(s1, "add a small red star")  # a branch at turn 1
    again = ed.turn(s1, SEQ.instructions[1])  # s1 is untouched by the branch
    assert np.array_equal(s1.image, cli[0]) and np.array_equal(again.image, cli[1]) and again.turn == 2
    assert not np.array_equal(other.image, again.image)
    rgba = np.dstack([SEQ.source, np.full(SEQ.source.shape[:2], 255, np.uint8)])  # opaque alpha: same source
    assert np.array_equal(ed.start(rgba).image, s0.image)
    bad = {"float array": lambda: ed.start(SEQ.source.astype(np.float32)),
           "empty instruction": lambda: ed.turn(s1, "  "),
           "a string for the list": lambda: ed.edit(SEQ.source, "add a hat"),
           "missing file": lambda: ed.start("/nonexistent.png")}
    for name, call in bad.items():
        with pytest.raises(EditError):
            call()
            print(f"no error: {name}")
    with pytest.raises(TypeError, match="unknown option.*windw"):
        Editor(ckpt, windw=2)
    with pytest.raises(ValueError, match="window must be >= 1"):
        Editor(ckpt, window=0)
    with pytest.raises(ValueError, match="gamma is an MCIE option; add method='mcie'"):
        Editor(ckpt, gamma=0.5)
    for bad in (dict(anchor_weight=0.0), dict(anchor_weight=0.5, method="mcie"),
                dict(anchor_weight=0.5, no_anchor=True)):
        with pytest.raises(ValueError, match="anchor_weight must be > 0 and weighs AnchorEdit's anchor"):
            Editor(ckpt, **bad)
    for bad in (dict(anchor_gate=0.2), dict(anchor_gate=0.2, anchor_weight=1.0),
                dict(anchor_gate=0.0, anchor_weight=4)):
        with pytest.raises(ValueError, match="anchor_gate must be > 0 and gates anchor_weight"):
            Editor(ckpt, **bad)
    for bad in (dict(latest_weight=0.0), dict(latest_weight=2.0, method="mcie")):
        with pytest.raises(ValueError, match="latest_weight must be > 0 and weighs AnchorEdit's memory"):
            Editor(ckpt, **bad)
    for bad in (dict(edit_region=0.0), dict(edit_region=0.3, method="mcie")):
        with pytest.raises(ValueError, match="edit_region must be > 0 .* not with method mcie"):
            Editor(ckpt, **bad)
    for bad in (dict(outside_mix=0.2), dict(outside_mix=1.5, edit_region=0.3)):
        with pytest.raises(ValueError, match="outside_mix must be in .0, 1. and mixes outside edit_region"):
            Editor(ckpt, **bad)
    weighed = Editor(ckpt, anchor_weight=0.5)
    assert weighed.session.settings.anchor_weight == 0.5
    assert not np.array_equal(weighed.edit(source_png, SEQ.instructions[:1])[0], cli[0])


def test_cli_defaults_are_the_editors():
    """The CLI's flags default to edit_session.OPTIONS, the Editor's defaults: one source, so a default
    changed in one place changes both, and every option of the Editor is a flag of the CLI."""
    from anchoredit_jax.edit_session import OPTIONS
    args = vars(edit.parse_args(["--checkpoint", "c", "--image", "i.png", "--out", "o"]))
    assert {k: args[k] for k in OPTIONS} == OPTIONS
    assert vars(edit.parse_args(["--checkpoint", "c", "--image", "i.png", "--out", "o", "--window", "2",
                                 "--anchor-weight", "0.5"]))["window"] == 2
