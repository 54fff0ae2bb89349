"""Release folders (anchoredit_jax.release): exact weights, self-contained, never overwritten,
usable wherever a training workdir is (edit CLI)."""
import json
import logging
import os
import re
import shutil

import chex
import jax
import numpy as np
import pytest
from absl import logging as absl_logging
from PIL import Image

from anchoredit_jax import checkpointing, edit, release
from anchoredit_jax import train as train_lib
from anchoredit_jax.config_lib import load_config
from anchoredit_jax.data.shapes_edit import generate_sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def workdir(tiny_stage1_run):
    return tiny_stage1_run  # conftest.py: 2 steps, EMA decay 0.9, shared with other modules


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


def test_quiet_logging_drops_orbax_info_and_the_item_metadata_warning(workdir, caplog):
    """Restoring a workdir logs orbax INFO records and a warning that `<step>/state` has no metadata
    file; with the filter the CLIs install, neither reaches the log, and other warnings still do."""
    def restore_and_log():
        caplog.clear()
        with caplog.at_level(logging.INFO):
            checkpointing.load_trained(workdir)
            absl_logging.warning("a warning of ours")
        return caplog.records

    def orbax(records):
        return [r for r in records if "/orbax/" in r.pathname.replace(os.sep, "/")]

    absl = logging.getLogger("absl")
    absl.filters = [f for f in absl.filters if not isinstance(f, checkpointing._QuietOrbax)]
    loud = restore_and_log()
    assert any(r.levelno < logging.WARNING for r in orbax(loud))
    assert any(r.getMessage().startswith("Metadata file does not exist") for r in orbax(loud))
    checkpointing.quiet_logging()
    checkpointing.quiet_logging()  # idempotent: one filter
    try:
        assert sum(isinstance(f, checkpointing._QuietOrbax) for f in absl.filters) == 1
        quiet = restore_and_log()
        assert orbax(quiet) == []
        assert "a warning of ours" in [r.getMessage() for r in quiet]
        checkpointing.quiet_logging(keep_info=True)
        kept = restore_and_log()
        assert any(r.levelno < logging.WARNING for r in orbax(kept))
        assert not any(r.getMessage().startswith("Metadata file does not exist") for r in kept)
    finally:
        absl.filters = [f for f in absl.filters if not isinstance(f, checkpointing._QuietOrbax)]


def test_quiet_logging_drops_only_the_missing_tpu_runtime(caplog):
    """jax's INFO that libtpu is absent opens every CLI's log on CPU/GPU machines: dropped; the same
    record for another backend (a GPU that failed to start) passes, and keep_info keeps both."""
    jax_logger = logging.getLogger("jax._src.xla_bridge")

    def emit():
        caplog.clear()
        with caplog.at_level(logging.INFO):
            for platform in ("tpu", "cuda"):
                jax_logger.info("Unable to initialize backend '%s': %s", platform, "INTERNAL: not here")
        return [r.getMessage().split("'")[1] for r in caplog.records]

    try:
        jax_logger.filters = []
        assert emit() == ["tpu", "cuda"]
        checkpointing.quiet_logging()
        checkpointing.quiet_logging()  # idempotent: one filter
        assert len(jax_logger.filters) == 1 and emit() == ["cuda"]
        checkpointing.quiet_logging(keep_info=True)
        assert emit() == ["tpu", "cuda"]
    finally:
        jax_logger.filters = []


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


def test_init_from_names_the_data_flags_the_source_was_trained_with(workdir, caplog):
    """A run started from another with a different data mix (stage-2 configs draw stage 1's default
    mix unless told) gets one warning with the flags that would match the source; none if it matches."""
    import flax.linen as nn

    from anchoredit_jax import config_lib
    from anchoredit_jax.model import init_params

    same = load_config(os.path.join(ROOT, "configs/stage2_shapes.py"), "test")
    assert config_lib.data_differences(same, workdir) == []  # stage 2 on stage 1's defaults: the same data
    other = load_config(os.path.join(ROOT, "configs/stage2_shapes.py"), "test", **{
        "data.edit_weights.add": 9.0, "data.edit_weights.move": 0.5})
    src = json.load(open(os.path.join(workdir, "config.json")))["data"]["edit_weights"]
    assert config_lib.data_differences(other, workdir) == [
        f"--config.data.edit_weights.add={src['add']}", f"--config.data.edit_weights.move={src['move']}"]
    _, mcfg, _ = checkpointing.load_trained(workdir)
    fresh = nn.unbox(init_params(mcfg, jax.random.key(1)))
    with caplog.at_level(logging.WARNING):
        train_lib.load_init_params(workdir, fresh, (), None, config=other)
    warned = [r.getMessage() for r in caplog.records if "trained on other data" in r.getMessage()]
    assert len(warned) == 1 and f"--config.data.edit_weights.add={src['add']}" in warned[0]
    assert config_lib.data_differences(other, os.path.dirname(workdir)) == []  # no config.json: nothing to say


def test_init_from_starts_the_ema_from_the_loaded_weights(workdir, tmp_path):
    """After one step at learning rate 0 the EMA is still the init_from weights (not mixed with a random init)."""
    cfg = load_config(os.path.join(ROOT, "configs/stage1_shapes.py"), "test", **{
        "num_steps": 1, "val.sample_every": 0, "eval_every": 0, "checkpoint.every": 1,
        "checkpoint.async_save": False, "ema_decay": 0.9, "optim.lr": 0.0, "init_from": workdir})
    train_lib.train(cfg, str(tmp_path / "next"))
    _, _, loaded = checkpointing.load_trained(workdir, which="ema")
    _, _, ema = checkpointing.load_trained(str(tmp_path / "next"), which="ema")
    chex.assert_trees_all_close(ema, loaded, rtol=1e-6, atol=1e-7)


_TINY_VAE_STATS = {"mean": [0.0] * 16, "std": [1.0] * 16, "num_images": 1}


def _tiny_vae_cfg():
    from anchoredit_jax import vae as vae_lib
    return vae_lib.WanVAEConfig(base_dim=8, z_dim=16, dim_mult=(1, 2), num_res_blocks=1, attn_scales=(),
                                temperal_downsample=(False,), latents_mean=(0.0,) * 16, latents_std=(1.0,) * 16)


def _with_vae(run, vae_dir):
    """Points the copied run `run` at the train_vae workdir `vae_dir`."""
    with open(os.path.join(run, "config.json")) as f:
        config = json.load(f)
    config["vae"]["workdir"] = vae_dir
    with open(os.path.join(run, "config.json"), "w") as f:
        json.dump(config, f)


def _vae_workdir(path, cfg, params, stats):
    """A train_vae workdir (layout of anchoredit_jax.train_vae) holding `params`."""
    import orbax.checkpoint as ocp
    os.makedirs(path)
    with open(os.path.join(path, "vae_config.json"), "w") as f:
        json.dump(cfg.to_diffusers(), f)
    with open(os.path.join(path, "latent_stats.json"), "w") as f:
        json.dump(stats, f)
    with ocp.CheckpointManager(os.path.join(path, "checkpoints")) as m:
        m.save(1, args=ocp.args.StandardSave(params))


def test_release_ships_a_decoder_finetune_only_if_the_encoder_is_the_runs(workdir, tmp_path):
    """--vae: a VAE with the run's encoder and stats replaces it; any other one is refused by name."""
    from anchoredit_jax import train_vae
    from anchoredit_jax import vae as vae_lib
    stats, cfg = _TINY_VAE_STATS, _tiny_vae_cfg()
    a = vae_lib.init_params(cfg, 0)
    b = jax.tree.map(lambda x: x, a)
    b["params"]["decoder"] = vae_lib.init_params(cfg, 1)["params"]["decoder"]  # a "fine-tuned" decoder
    c = vae_lib.init_params(cfg, 2)  # another encoder
    for name, p in (("vae_a", a), ("vae_b", b), ("vae_c", c)):
        _vae_workdir(str(tmp_path / name), cfg, p, stats)
    run = str(tmp_path / "run")
    shutil.copytree(workdir, run)
    _with_vae(run, str(tmp_path / "vae_a"))

    out = str(tmp_path / "rel")
    assert release.main(["--checkpoint", run, "--out", out, "--vae", str(tmp_path / "vae_b")]) == 0
    _, shipped, _ = train_vae.load_trained_vae(os.path.join(out, "vae"))
    chex.assert_trees_all_equal(shipped, b)
    with open(os.path.join(out, "release.json")) as f:
        assert json.load(f)["vae_source"] == str(tmp_path / "vae_b")
    with pytest.raises(ValueError, match="vae_c: its encoder or latent statistics differ"):
        release.export(run, str(tmp_path / "rel_c"), vae=str(tmp_path / "vae_c"))
    assert not os.path.exists(tmp_path / "rel_c") and not os.path.exists(str(tmp_path / "rel_c") + ".partial")
    with pytest.raises(ValueError, match="random VAE"):
        release.export(workdir, str(tmp_path / "rel_d"), vae=str(tmp_path / "vae_b"))


def test_bfloat16_release_is_the_rounded_weights_widened_and_smaller(workdir, tmp_path):
    """--dtype bfloat16: stored once rounded, loaded back as float32 (what every tool computes in)."""
    full, half = str(tmp_path / "f32"), str(tmp_path / "bf16")
    release.export(workdir, full, which="ema")
    info = release.export(workdir, half, which="ema", dtype="bfloat16")
    assert info["dtype"] == "bfloat16"
    assert release.folder_bytes(os.path.join(half, "dit")) < 0.75 * release.folder_bytes(os.path.join(full, "dit"))
    _, _, ema = checkpointing.load_trained(workdir, which="ema")
    _, _, got = checkpointing.load_trained(half)
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(got))
    rounded = jax.tree.map(lambda x: np.asarray(x).astype(jax.numpy.bfloat16).astype(np.float32), ema)
    chex.assert_trees_all_equal(rounded, got)
    assert not all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), ema, got)))  # it did round
    again = str(tmp_path / "again")  # a release re-stored: same weights, its origin kept
    info = release.export(full, again, dtype="bfloat16")
    assert info["source"] == os.path.normpath(workdir) and info["restored_from"] == os.path.normpath(full)
    chex.assert_trees_all_equal(checkpointing.load_trained(again)[2], got)
    with pytest.raises(ValueError, match="dtype must be"):
        release.export(workdir, str(tmp_path / "x"), dtype="float16")
    assert not os.path.exists(str(tmp_path / "x"))


def test_release_of_an_earlier_step_is_that_steps_ema(workdir, tmp_path, capsys):
    """--step N releases the EMA of checkpoint N, not the newest; a step the run no longer keeps, or a
    step asked of a release, is one error and writes nothing."""
    import orbax.checkpoint as ocp

    from anchoredit_jax import vae as vae_lib
    run = str(tmp_path / "run")
    shutil.copytree(workdir, run)
    cfg = _tiny_vae_cfg()  # a VAE saved at step 1: the release's step must stay the DiT's
    _vae_workdir(str(tmp_path / "vae"), cfg, vae_lib.init_params(cfg, 0), _TINY_VAE_STATS)
    _with_vae(run, str(tmp_path / "vae"))
    state = checkpointing.restore_on_one_device(os.path.join(run, "checkpoints", "2", "state"))
    later = dict(state, ema=jax.tree.map(lambda x: np.asarray(x) + 1.0, state["ema"]))
    with ocp.StandardCheckpointer() as ck:  # a later checkpoint with other weights
        ck.save(os.path.join(run, "checkpoints", "7", "state"), later)
    chex.assert_trees_all_close(checkpointing.load_trained(run)[2], later["ema"])  # newest by default
    out = str(tmp_path / "at2")
    assert release.main(["--checkpoint", run, "--step", "2", "--out", out]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 2
    chex.assert_trees_all_equal(checkpointing.load_trained(out)[2], checkpointing.load_trained(workdir)[2])
    assert release.main(["--checkpoint", run, "--step", "3", "--out", str(tmp_path / "at3")]) == 1
    assert "keeps no step 3 (it keeps [2, 7])" in capsys.readouterr().err
    assert release.main(["--checkpoint", out, "--step", "2", "--out", str(tmp_path / "again")]) == 1
    assert "is a release" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "at3") and not os.path.exists(tmp_path / "again")


def test_the_shipped_release_loads_and_fits_the_quickstart_budget():
    """weights/shapes_stage3 (what the quickstart edits with): whole, at most 25 MB, its release.json true."""
    path = os.path.join(ROOT, "weights", "shapes_stage3")
    size = release.folder_bytes(path)
    assert size <= 25e6, f"{path} is {size / 1e6:.1f} MB"
    with open(os.path.join(path, "release.json")) as f:
        info = json.load(f)
    config, mcfg, params = checkpointing.load_trained(path)
    assert sum(np.size(x) for x in jax.tree.leaves(params)) == info["dit_params"]
    assert all(x.dtype == np.float32 and np.all(np.isfinite(x)) for x in jax.tree.leaves(params))
    assert os.path.exists(os.path.join(config.vae.workdir, "latent_stats.json"))


def test_blend_weights_is_the_weighted_mean_in_a_new_release(workdir, tmp_path, capsys):
    """benchmarks/blend_weights.py (the stage-2 blend of README's shipped model): (1 - a) A + a B,
    A's config and VAE kept."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("blend_weights", os.path.join(ROOT, "benchmarks/blend_weights.py"))
    blend = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(blend)
    a = str(tmp_path / "a")
    release.export(workdir, a, which="ema")
    out = str(tmp_path / "blend")
    blend.main(["--a", a, "--b", workdir, "--alpha", "0.25", "--out", out])  # B: the workdir's EMA
    _, _, pa = checkpointing.load_trained(a)
    _, _, raw = checkpointing.load_trained(workdir, which="params")
    chex.assert_trees_all_close(checkpointing.load_trained(out)[2], pa, rtol=1e-6)  # EMA of B == A here
    with open(os.path.join(out, "release.json")) as f:
        assert json.load(f)["blend"] == {"a": os.path.normpath(a), "b": os.path.normpath(workdir), "alpha": 0.25}
    raw_rel = str(tmp_path / "raw")
    release.export(workdir, raw_rel, which="params")
    mid = str(tmp_path / "mid")
    blend.main(["--a", a, "--b", raw_rel, "--alpha", "0.25", "--out", mid])
    want = jax.tree.map(lambda x, y: 0.75 * np.asarray(x) + 0.25 * np.asarray(y), pa, raw)
    chex.assert_trees_all_close(checkpointing.load_trained(mid)[2], want, rtol=1e-6, atol=1e-7)
    for bad, why in ((["--alpha", "1.5", "--out", str(tmp_path / "x")], "alpha must be in"),
                     (["--alpha", "0.5", "--out", mid], "exists")):
        with pytest.raises(SystemExit):
            blend.main(["--a", a, "--b", raw_rel] + bad)
        assert why in capsys.readouterr().err
    assert not os.path.exists(str(tmp_path / "x"))


def test_val_loss_script_gives_the_loss_the_run_logged(tiny_stage1_run, capsys):
    """benchmarks/val_loss.py evaluates the same held-out pairs, noise and timesteps as training."""
    import sys
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import val_loss

    wd = tiny_stage1_run  # conftest.py: it logged its held-out loss at step 2
    logged = [json.loads(line) for line in open(os.path.join(wd, "metrics.jsonl"))]
    logged = [r["val_loss"] for r in logged if "val_loss" in r][-1]  # the EMA's, as validation uses
    val_loss.main(["--config", os.path.join(wd, "config.json"), wd, f"{wd}:params"])
    out = capsys.readouterr().out
    got = dict(re.findall(r"^(\S+): val_loss ([0-9.]+) \(", out, re.M))
    diff, half = map(float, re.findall(rf"^{re.escape(wd)}:params: .*; ([-+][0-9.]+) ± ([0-9.]+) against "
                                       rf"{re.escape(wd)} \(95%\)$", out, re.M)[0])
    assert diff == pytest.approx(float(got[f"{wd}:params"]) - float(got[wd]), abs=2e-4) and half > 0
    assert float(got[wd]) == pytest.approx(logged, abs=5e-5)
    assert float(got[f"{wd}:params"]) != float(got[wd])  # raw weights differ from the EMA's
    val_loss.main(["--config", os.path.join(wd, "config.json"), "--num-examples", "9", wd])
    out = capsys.readouterr().out
    assert out.startswith("9 held-out pairs") and float(re.findall(r"val_loss ([0-9.]+)", out)[0]) != float(got[wd])


def test_noop_phrasings_script_scores_every_phrasing_on_the_same_images(tiny_stage1_run, capsys):
    """benchmarks/noop_phrasings.py: a row per no-op phrasing (as written and with a period) and the null
    control, each paired against the first on the same images and noise."""
    import sys
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import noop_phrasings
    from anchoredit_jax.data.shapes_phrasing import TEMPLATES

    noop_phrasings.main(["--checkpoint", tiny_stage1_run, "--num-images", "3", "--steps", "2"])
    rows = re.findall(r"^(.+?)\s+([0-9.]+) ± ([0-9.]+)\s+([-+][0-9.]+) ± ([0-9.]+)\s+([0-9.]+)\s+(\d+)$",
                      capsys.readouterr().out, re.M)
    assert len(rows) == 2 * sum(len(t) for t in TEMPLATES["noop"]) + 1 and rows[-1][0] == "null instruction (control)"
    assert rows[0][3:5] == ("+0.00", "0.00")  # the first against itself
    assert all(0 <= int(r[6]) <= 3 for r in rows)  # images lost, of 3


def test_noop_phrasings_text_similarity_pools_each_instructions_tokens(tiny_stage1_run, capsys):
    """--text-similarity: a pooled vector is the unit mean of the real tokens' states ([CLS] no changes
    [SEP]: 4); different instructions pool apart; the table has a row per training no-op phrasing."""
    import sys
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import noop_phrasings
    from anchoredit_jax import evaluate
    from anchoredit_jax.data.shapes_phrasing import TEMPLATES

    ld = evaluate.load_checkpoint(tiny_stage1_run, "ema", "")
    got = noop_phrasings.pooled_text(ld, ["no changes", "give the cat's body a checkered pattern at the top left"])
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-6)
    tx, tm = evaluate.embed_instructions(ld, [["no changes"]])
    states = np.asarray(tx[0, 0], np.float64)
    assert int(np.asarray(tm).sum()) == 4 and states.shape[0] > 4
    real = states[:4].mean(0)
    np.testing.assert_allclose(got[0], real / np.linalg.norm(real), atol=1e-5)
    assert got[0] @ got[1] < 0.999
    noop_phrasings.main(["--checkpoint", tiny_stage1_run, "--text-similarity", "4"])
    rows = [line for line in capsys.readouterr().out.splitlines()[2:] if line.strip()]
    assert [r[:28].strip() for r in rows] == list(TEMPLATES["noop"][0])
    assert all(-1 <= float(v) <= 1 for r in rows for v in r[28:].split())
