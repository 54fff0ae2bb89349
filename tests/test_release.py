"""Release folders (anchoredit_jax.release): exact weights, self-contained, never overwritten,
usable wherever a training workdir is (edit CLI)."""
import json
import os

import chex
import jax
import numpy as np
import pytest
from PIL import Image

from anchoredit_jax import checkpointing, edit, release
from anchoredit_jax import train as train_lib
from anchoredit_jax.config_lib import load_config
from anchoredit_jax.data.shapes_edit import generate_sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("run") / "workdir")
    cfg = load_config(os.path.join(ROOT, "configs/stage1_shapes.py"), "test", **{
        "num_steps": 2, "val.sample_every": 0, "eval_every": 1000, "checkpoint.every": 2,
        "checkpoint.async_save": False, "ema_decay": 0.9})
    train_lib.train(cfg, wd)
    return wd


def test_export_load_is_exact_and_refuses_to_overwrite(workdir, tmp_path):
    out = str(tmp_path / "rel")
    info = release.export(workdir, out, which="ema")
    assert info["step"] == 2 and info["weights"] == "ema" and info["dit_params"] > 0
    assert release.is_release(out) and not os.path.exists(out + ".partial")
    assert not os.path.exists(os.path.join(out, "checkpoints"))  # no optimiser state shipped
    _, mcfg_a, ema = checkpointing.load_trained(workdir, which="ema")
    _, raw_b = checkpointing.load_trained(workdir, which="params")[1:]
    config, mcfg_b, got = checkpointing.load_trained(out)
    assert mcfg_a == mcfg_b and config.stage == "stage1"
    chex.assert_trees_all_equal(ema, got)
    differs = jax.tree.map(lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))), raw_b, got)
    assert not all(jax.tree.leaves(differs))  # it is the EMA that was exported, not the raw params
    before = sorted(os.listdir(out))
    with pytest.raises(FileExistsError, match="exists"):
        release.export(workdir, out)
    assert sorted(os.listdir(out)) == before
    assert release.main(["--checkpoint", workdir, "--out", out]) == 1
    with open(os.path.join(out, "release.json")) as f:
        assert json.load(f)["source"] == os.path.normpath(workdir)


def test_edit_cli_runs_on_a_release(workdir, tmp_path, capsys):
    out = str(tmp_path / "rel")
    release.export(workdir, out)
    seq = generate_sequence(3, 2, 64, split="heldout_seeds")
    img = str(tmp_path / "src.png")
    Image.fromarray(seq.source).save(img)
    rc = edit.main(["--checkpoint", out, "--image", img, "--out", str(tmp_path / "e"), "--steps", "2",
                    "--instructions", *seq.instructions])
    assert rc == 0, capsys.readouterr().err
    assert os.path.exists(tmp_path / "e" / "turn_02.png") and os.path.exists(tmp_path / "e" / "contact_sheet.png")


def test_init_from_a_release_loads_its_weights(workdir, tmp_path):
    """A release is a valid `init_from` (how a next run continues the shipped model)."""
    import flax.linen as nn

    from anchoredit_jax.model import init_params

    out = str(tmp_path / "rel")
    release.export(workdir, out)
    _, mcfg, ema = checkpointing.load_trained(workdir, which="ema")
    fresh = nn.unbox(init_params(mcfg, jax.random.key(1)))
    got = train_lib.load_init_params(out, fresh, (), None)
    chex.assert_trees_all_equal(ema, got)
