"""The evaluation CLI (anchoredit_jax.evaluate), its metrics and the round-trip / no-op protocols.

The checkpoint is a random tiny DiT saved in the training workdir layout (no training run): the
CLI's plumbing, determinism and method differences do not need a trained model.
"""
import csv
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from anchoredit_jax import eval_metrics, evaluate
from anchoredit_jax.config_lib import load_config, model_config
from anchoredit_jax.data import jsonl, shapes_protocols
from anchoredit_jax.data.images import to_float
from anchoredit_jax.data.shapes_edit import generate_sequence
from anchoredit_jax.model import init_params

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


pytestmark = pytest.mark.usefixtures("cache_small_programs")  # conftest.py


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run") / "workdir"
    cfg = load_config(os.path.join(ROOT, "configs/stage1_shapes.py"), "test")
    os.makedirs(workdir / "checkpoints" / "1")
    (workdir / "config.json").write_text(cfg.to_json(indent=2))
    params = nn.unbox(init_params(model_config(cfg), jax.random.key(0)))
    # The output projection starts at zero (velocity 0 whatever the memory): perturb every weight
    # so that outputs depend on the memory, as a trained model's do.
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    params = jax.tree.unflatten(tree, [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
    with ocp.StandardCheckpointer() as c:
        c.save(str(workdir / "checkpoints" / "1" / "state"), {"params": params})
    return str(workdir)


def _cli(ckpt, out, *extra):
    argv = ["--checkpoint", f"tiny={ckpt}", "--turns", "3", "--num-sequences", "2", "--batch-size", "2",
            "--steps", "2", "--methods", "anchor_w2,naive", "--out", str(out), *extra]
    return evaluate.main([str(a) for a in argv])


def _csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def two_runs(ckpt, tmp_path_factory):
    outs = [tmp_path_factory.mktemp("eval") / n for n in ("a", "b")]
    for i, out in enumerate(outs):
        # the second run: the default methods on one protocol, to compare against the first's numbers
        extra = ["--methods", "anchor_w2,no_anchor_w2,naive", "--protocols", "edit,roundtrip,noop"] if i == 0 \
            else ["--protocols", "edit"]
        assert _cli(ckpt, out, *extra) == 0
    return outs


# ----------------------------------------------------------------------------- CLI
def test_cli_writes_every_file(two_runs):
    out = two_runs[0]
    for name in ("metrics.csv", "per_sequence.csv.gz", "summary.json", "contact_sheet.png",
                 "contact_sheet_roundtrip.png", "contact_sheet_noop.png", "table.md", "metric_psnr.png",
                 "metric_ssim.png", "metric_lpips.png", "metric_identity_psnr.png", "metric_edit_psnr.png"):
        assert (out / name).is_file(), name
    rows = _csv(out / "metrics.csv")
    keys = {(r["method"], r["protocol"], r["metric"]) for r in rows}
    methods, protocols = {"tiny/anchor_w2", "tiny/no_anchor_w2", "tiny/naive"}, {"edit", "roundtrip", "noop"}
    assert keys == {(m, p, k) for m in methods for p in protocols for k in eval_metrics.METRICS}
    assert {int(r["turn"]) for r in rows} == {1, 2, 3}
    psnr = [r for r in rows if r["metric"] == "psnr"]
    assert all(int(r["n"]) == 2 and np.isfinite(float(r["value"])) for r in psnr)
    noop_edit = [r for r in rows if r["protocol"] == "noop" and r["metric"] == "edit_psnr"]
    assert all(int(r["n"]) == 0 and r["value"] == "" for r in noop_edit)  # nothing to succeed at
    summary = json.loads((out / "summary.json").read_text())
    assert [m["name"] for m in summary["methods"]] == ["tiny/anchor_w2", "tiny/no_anchor_w2", "tiny/naive"]
    assert summary["methods"][2]["window"] == 1 and summary["methods"][2]["anchor"] is False


def test_per_sequence_values_are_what_the_means_average_and_pair(two_runs, capsys):
    """per_sequence.csv.gz holds every valid value: their means and counts are metrics.csv's, and
    readme_tables --against prints their paired differences (the difference of the means where
    every sequence counts) with an interval."""
    import gzip
    import re
    import sys
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import readme_tables

    out = two_runs[0]
    with gzip.open(out / "per_sequence.csv.gz", "rt", newline="") as f:
        per = list(csv.DictReader(f))
    groups: dict = {}
    for r in per:
        groups.setdefault((r["method"], r["protocol"], r["metric"], r["turn"]), []).append(float(r["value"]))
    means = {(r["method"], r["protocol"], r["metric"], r["turn"]): r for r in _csv(out / "metrics.csv")}
    assert {k for k, r in means.items() if int(r["n"])} == set(groups)
    for key, values in groups.items():
        assert len(values) == int(means[key]["n"])
        np.testing.assert_allclose(np.mean(values), float(means[key]["value"]), rtol=1e-5)
    assert readme_tables.main([str(out), "--against", "tiny/anchor_w2", "--metrics", "psnr", "--turns", "3"]) == 0
    row = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| tiny/naive |")][0]
    diff, half = map(float, re.findall(r"([-+][0-9.]+) ± ([0-9.]+)", row)[0])
    want = float(means[("tiny/naive", "edit", "psnr", "3")]["value"]) - float(
        means[("tiny/anchor_w2", "edit", "psnr", "3")]["value"])
    assert diff == pytest.approx(want, abs=0.006) and half > 0
    # A range of turns: each sequence's mean over it, then the mean over sequences.
    assert readme_tables.main([str(out), "--metrics", "psnr", "--turns", "2-3,3"]) == 0
    row = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| tiny/naive |")][0]
    by_seq: dict = {}
    for r in per:
        if (r["method"], r["protocol"], r["metric"]) == ("tiny/naive", "edit", "psnr") and r["turn"] in ("2", "3"):
            by_seq.setdefault(r["sequence"], []).append(float(r["value"]))
    span, turn3 = map(float, re.findall(r"\| ([0-9.]+)", row))
    assert span == pytest.approx(np.mean([np.mean(v) for v in by_seq.values()]), abs=0.006)
    assert turn3 == pytest.approx(float(means[("tiny/naive", "edit", "psnr", "3")]["value"]), abs=0.006)
    assert readme_tables.main([str(out), "--turns", "3-2"]) == 1 and "rising range" in capsys.readouterr().err


def test_same_seed_same_numbers_and_naive_differs(two_runs):
    a, b = (_csv(o / "metrics.csv") for o in two_runs)
    assert {r["method"] for r in b} == {"tiny/anchor_w2", "tiny/naive"}
    assert [r for r in a if "no_anchor" not in r["method"] and r["protocol"] == "edit"] == b  # a: more of both
    val = {(r["method"], r["protocol"], r["metric"], r["turn"]): r["value"] for r in a}
    # Turn 1 sees only the source in both memories; later turns differ (anchor + 2 vs the last frame).
    diffs = [val[("tiny/anchor_w2", "edit", "source_psnr", t)] != val[("tiny/naive", "edit", "source_psnr", t)]
             for t in ("2", "3")]
    assert all(diffs)


def test_anchor_matters_only_after_eviction(two_runs):
    """No-anchor W=2 holds the source in its window until turn 3 evicts it: turns 1-2 equal anchor W=2
    (same keys, same RoPE slots), turn 3 differs."""
    val = {(r["method"], r["metric"], r["turn"]): float(r["value"]) for r in _csv(two_runs[0] / "metrics.csv")
           if r["protocol"] == "noop" and r["metric"] == "source_psnr"}
    for t in ("1", "2"):
        assert val[("tiny/anchor_w2", "source_psnr", t)] == pytest.approx(val[("tiny/no_anchor_w2", "source_psnr", t)],
                                                                          abs=2e-5)  # csv: 6 digits
    assert abs(val[("tiny/anchor_w2", "source_psnr", "3")] - val[("tiny/no_anchor_w2", "source_psnr", "3")]) > 1e-3


def test_protocol_paths_and_padding(ckpt, tmp_path):
    """A JSONL set (one sequence shorter than --turns, one turn without a target) runs, and padding
    turns are never counted."""
    seqs = [generate_sequence(i, 3 - i, 64, split="heldout_seeds") for i in range(2)]
    seqs[0].has_target[1] = False
    path = jsonl.export_jsonl(seqs, str(tmp_path / "data"))
    assert _cli(ckpt, tmp_path / "out", "--jsonl", path, "--methods", "naive", "--sheet", "1") == 0
    n = {(r["metric"], r["turn"]): int(r["n"]) for r in _csv(tmp_path / "out" / "metrics.csv")}
    assert [n[("source_psnr", t)] for t in "123"] == [2, 2, 1]
    assert [n[("psnr", t)] for t in "123"] == [2, 1, 1]


@pytest.mark.parametrize("extra, message", [
    (["--methods", "anchor_w0"], "unknown method"), (["--methods", "bogus"], "unknown method"),
    (["--steps", "two"], "--steps"), (["--sampler", "magic"], "--sampler"),
])
def test_bad_input_one_clear_error(ckpt, tmp_path, capsys, extra, message):
    assert _cli(ckpt, tmp_path / "out", *extra) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0]
    assert not (tmp_path / "out").exists()  # nothing written before the checks pass


def test_bad_paths_and_flags(ckpt, tmp_path, capsys):
    assert evaluate.main(["--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 1
    assert "no such directory" in capsys.readouterr().err
    assert evaluate.main(["--checkpoint", ckpt, "--turns", "0", "--out", str(tmp_path / "o")]) == 2
    assert "--turns must be >= 1" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("keep")
    assert _cli(ckpt, tmp_path / "full") == 1
    assert "--overwrite" in capsys.readouterr().err
    assert _cli(ckpt, tmp_path / "full", "--overwrite", "--sheet", "0") == 0
    assert (tmp_path / "full" / "mine.txt").read_text() == "keep" and (tmp_path / "full" / "metrics.csv").is_file()


def test_method_registry_and_names():
    args = evaluate.parse_args(["--checkpoint", "x", "--out", "o", "--methods", "naive", "--windows", "1,4",
                                "--no-anchor", "--steps", "4,20"])
    methods = evaluate.make_methods(args, {"s1": {"guidance": 2.0}})
    assert [m.name for m in methods] == [f"s1/{p}/s{n}" for p in ("naive", "anchor_w1", "no_anchor_w1", "anchor_w4",
                                                                  "no_anchor_w4") for n in (4, 20)]
    assert [(m.window, m.keep_anchor) for m in methods[:6:2]] == [(1, False), (1, True), (1, False)]
    # Unset sampler flags come from each checkpoint's `val` section (a distilled run: consistency, 4 steps).
    args = evaluate.parse_args(["--checkpoint", "x", "--out", "o", "--guidance", "1.5"])
    m1, _, m3, _ = evaluate.make_methods(args, {"s1": {}, "s3": {"sampler": "consistency", "sample_steps": 4}})
    assert (m1.settings.method, m1.settings.num_steps, m1.settings.guidance) == ("euler", 20, 1.5)
    assert (m3.name, m3.settings.method, m3.settings.num_steps) == ("s3/anchor_w4", "consistency", 4)
    args = evaluate.parse_args(["--checkpoint", "x", "--out", "o", "--anchor-weights", "1,0.5"])
    names = [(m.name, m.settings.anchor_weight) for m in evaluate.make_methods(args, {"s": {}})]
    assert names == [("s/anchor_w4/a1", 1.0), ("s/anchor_w4/a0.5", 0.5), ("s/naive/a1", 1.0), ("s/naive/a0.5", 0.5)]
    for bad in ("0", "x"):
        with pytest.raises(evaluate.EvalError, match="--anchor-weights"):
            evaluate.anchor_weights(evaluate.parse_args(["--checkpoint", "x", "--out", "o", "--anchor-weights", bad]))
    args = evaluate.parse_args(["--checkpoint", "x", "--out", "o", "--anchor-weights", "1,4",
                                "--anchor-gates", "0,0.5"])
    got = [(m.name, m.settings.anchor_weight, m.settings.anchor_gate) for m in evaluate.make_methods(args, {"s": {}})
           if m.name.startswith("s/anchor_w4")]  # weight 1 once: nothing to gate
    assert got == [("s/anchor_w4/a1", 1.0, 0.0), ("s/anchor_w4/a4", 4.0, 0.0), ("s/anchor_w4/a4/g0.5", 4.0, 0.5)]
    for bad in (["--anchor-gates", "-1", "--anchor-weights", "4"], ["--anchor-gates", "x", "--anchor-weights", "4"],
                ["--anchor-gates", "0.5"]):
        with pytest.raises(evaluate.EvalError, match="--anchor-gates"):
            evaluate.anchor_gates(evaluate.parse_args(["--checkpoint", "x", "--out", "o"] + bad))
    args = evaluate.parse_args(["--checkpoint", "x", "--out", "o", "--methods", "anchor_w4", "--latest-weights", "1,2",
                                "--anchor-weights", "4", "--anchor-gates", "0.5"])
    got = [(m.name, m.settings.read_kw) for m in evaluate.make_methods(args, {"s": {}})]
    assert got == [("s/anchor_w4/a4/g0.5/l1", dict(anchor_weight=4.0, anchor_gate=0.5, latest_weight=1.0)),
                   ("s/anchor_w4/a4/g0.5/l2", dict(anchor_weight=4.0, anchor_gate=0.5, latest_weight=2.0))]
    with pytest.raises(evaluate.EvalError, match="--latest-weights"):
        evaluate.latest_weights(evaluate.parse_args(["--checkpoint", "x", "--out", "o", "--latest-weights", "0"]))
    args = evaluate.parse_args(["--checkpoint", "x", "--out", "o", "--methods", "anchor_w4", "--edit-regions", "0,0.3"])
    got = [(m.name, m.settings.edit_region) for m in evaluate.make_methods(args, {"s": {}})]
    assert got == [("s/anchor_w4/r0", 0.0), ("s/anchor_w4/r0.3", 0.3)]
    with pytest.raises(evaluate.EvalError, match="--edit-regions"):
        evaluate.edit_regions(evaluate.parse_args(["--checkpoint", "x", "--out", "o", "--edit-regions", "-1"]))
    args = evaluate.parse_args(["--checkpoint", "x", "--out", "o", "--methods", "anchor_w4", "--edit-regions", "0,0.3",
                                "--outside-mixes", "0,0.2"])
    got = [(m.name, m.settings.edit_region, m.settings.outside_mix) for m in evaluate.make_methods(args, {"s": {}})]
    assert got == [("s/anchor_w4/r0", 0.0, 0.0), ("s/anchor_w4/r0.3/o0", 0.3, 0.0), ("s/anchor_w4/r0.3/o0.2", 0.3, 0.2)]
    for bad in (["--outside-mixes", "0.2"], ["--outside-mixes", "1.5", "--edit-regions", "0.3"]):
        with pytest.raises(evaluate.EvalError, match="--outside-mixes"):
            evaluate.outside_mixes(evaluate.parse_args(["--checkpoint", "x", "--out", "o"] + bad))
    assert evaluate.parse_checkpoint("a=runs/x@params", "ema") == ("a", "runs/x", "params")
    assert evaluate.parse_checkpoint("runs/stage1/", "best") == ("stage1", "runs/stage1/", "best")
    assert set(evaluate.METHODS) >= {"anchoredit"}


def test_mcie_presets():
    assert evaluate.parse_preset("mcie") == dict(kind="mcie", window=1, keep_anchor=False)  # previous frame only
    assert evaluate.parse_preset("mcie_anchor_w4") == dict(kind="mcie", window=4, keep_anchor=True)
    assert evaluate.parse_preset("copy")["kind"] == "copy" and evaluate.parse_preset("truth")["kind"] == "truth"
    for bad in ("mcie_anchor_w0", "mcie_no_anchor_w2", "mcie2"):
        with pytest.raises(evaluate.EvalError, match="unknown method"):
            evaluate.parse_preset(bad)


def test_copy_baseline_is_the_source(ckpt, tmp_path):
    """`copy` returns the source every turn: its error against the source is the same at every turn,
    and on the no-op protocol (target = source) it equals the error against the target."""
    out = tmp_path / "copy"
    assert _cli(ckpt, out, "--methods", "copy", "--protocols", "edit,noop", "--sheet", "0") == 0
    val = {(r["protocol"], r["metric"], r["turn"]): float(r["value"]) for r in _csv(out / "metrics.csv")
           if r["value"] != ""}
    for proto in ("edit", "noop"):
        assert val[(proto, "source_psnr", "1")] == val[(proto, "source_psnr", "2")] == val[(proto, "source_psnr", "3")]
    assert val[("noop", "psnr", "2")] == pytest.approx(val[("noop", "source_psnr", "2")], abs=1e-4)
    assert val[("edit", "psnr", "3")] < val[("edit", "source_psnr", "3")]  # the targets moved away


def test_truth_ceiling_is_the_targets_through_the_vae(ckpt, tmp_path):
    """`truth` returns each turn's target latent: its PSNR is the VAE's on the targets, computed here
    directly; on the no-op protocol (target = source) it is `copy`, to the bit."""
    out = tmp_path / "truth"
    assert _cli(ckpt, out, "--methods", "copy,truth", "--protocols", "edit,noop", "--sheet", "0") == 0
    val = {(r["method"], r["protocol"], r["metric"], r["turn"]): float(r["value"]) for r in _csv(out / "metrics.csv")
           if r["value"] != ""}
    for t in ("1", "2", "3"):
        assert val[("tiny/truth", "noop", "psnr", t)] == val[("tiny/copy", "noop", "psnr", t)]
    ld = evaluate.load_checkpoint(ckpt, "ema")
    args = evaluate.parse_args(["--checkpoint", ckpt, "--out", str(tmp_path / "x"), "--turns", "3",
                                "--num-sequences", "2"])
    d = evaluate.load_protocols(args, ld.resolution)[0]
    tgt = to_float(d.targets.reshape((-1,) + d.targets.shape[2:]))
    rec = ld.enc.decode_latents(ld.frozen, ld.enc.encode_images(ld.frozen, tgt))
    want = np.asarray(eval_metrics.psnr(rec, tgt)).reshape(d.targets.shape[:2]).mean(0)  # [K]
    got = [val[("tiny/truth", "edit", "psnr", t)] for t in ("1", "2", "3")]
    np.testing.assert_allclose(got, want, atol=1e-3)
    assert got[2] != val[("tiny/copy", "edit", "psnr", "3")]


def test_mcie_row_runs_and_records_latency(ckpt, tmp_path):
    out = tmp_path / "mcie"
    assert _cli(ckpt, out, "--methods", "mcie", "--num-sequences", "2", "--batch-size", "1", "--sheet", "0") == 0
    with open(out / "summary.json") as f:
        summary = json.load(f)
    (name, t), = summary["seconds_per_turn"].items()
    assert name.startswith("tiny/mcie") and t["batch_size"] == 1 and t["seconds_per_turn"] > 0


def _metrics(images, targets, source, masks, **flags):
    k, b = images.shape[:2]
    ones = jnp.ones((k, b), bool)
    lp = lambda x, y: jnp.mean(jnp.abs(x - y), (1, 2, 3))  # noqa: E731 - a stand-in with LPIPS's shape
    out = eval_metrics.per_turn_metrics(lp, images, targets, source, masks, flags.get("has_target", ones),
                                        flags.get("has_mask", ones), flags.get("exists", ones))
    return {m: (np.asarray(v), np.asarray(ok)) for m, (v, ok) in out.items()}


def test_psnr_capped_and_matches_definition():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(-1, 1, (2, 8, 8, 3)), jnp.float32)
    assert np.allclose(eval_metrics.psnr(x, x), eval_metrics.PSNR_CAP)
    y = jnp.clip(x + 0.1, -1, 1)
    mse = np.mean(np.square((np.asarray(x) - np.asarray(y)) / 2), (1, 2, 3))
    np.testing.assert_allclose(eval_metrics.psnr(x, y), -10 * np.log10(mse), rtol=1e-5)
    full = jnp.ones((2, 8, 8), bool)
    np.testing.assert_allclose(eval_metrics.masked_errors(x, y, full)[0], eval_metrics.psnr(x, y), rtol=1e-5)
    assert np.allclose(eval_metrics.masked_errors(x, x, full)[0], eval_metrics.PSNR_CAP)
    np.testing.assert_allclose(eval_metrics.ssim(x, x), 1.0, atol=1e-5)


def test_identity_and_edit_success_use_the_masks():
    rng = np.random.default_rng(1)
    src = jnp.asarray(rng.uniform(-1, 1, (1, 8, 8, 3)), jnp.float32)
    masks = np.zeros((2, 1, 8, 8), bool)
    masks[0, 0, :2], masks[1, 0, :, :2] = True, True  # turn 1 edits rows 0-1, turn 2 columns 0-1
    tgt = jnp.stack([src.at[:, :2].set(0.5), src.at[:, :2].set(0.5).at[:, :, :2].set(-0.5)])
    # Output: equal to the source outside the masks, garbage inside them.
    out = jnp.where(jnp.asarray(masks)[..., None], 0.9, src[None])
    m = _metrics(out, tgt, src, jnp.asarray(masks))
    assert np.allclose(m["identity_psnr"][0], eval_metrics.PSNR_CAP) and m["identity_mae"][0].max() == 0
    assert m["identity_psnr"][1].all()
    # Edit success: inside turn 1's mask the output is 0.9 vs target 0.5 -> MAE 0.2 on [0, 1].
    np.testing.assert_allclose(m["edit_mae"][0][0], 0.2, atol=1e-6)
    # The same error OUTSIDE the cumulative masks must hurt identity, not edit success.
    bad = out.at[1, 0, 5, 5].set(-1.0)
    m2 = _metrics(bad, tgt, src, jnp.asarray(masks))
    assert m2["identity_psnr"][0][1] < 60 and m2["identity_psnr"][0][0] == m["identity_psnr"][0][0]
    np.testing.assert_allclose(m2["edit_mae"][0], m["edit_mae"][0])
    # Unknown masks: identity is not measured from there on; empty mask: no edit success.
    m3 = _metrics(out, tgt, src, jnp.asarray(masks).at[1].set(False),
                  has_mask=jnp.array([[False], [True]]))
    assert not m3["identity_psnr"][1].any() and not m3["edit_psnr"][1].any()


def test_kept_edits_catch_an_edit_undone_later():
    """Turn 1 edits rows 0-1, turn 2 columns 0-1. An output that gets turn 2 right but draws rows 0-1
    back as the source had them (an earlier edit undone, as an anchor can pull it back) is perfect on
    identity and edit success and fails on kept edits; the ground truth itself is perfect there too."""
    rng = np.random.default_rng(2)
    src = jnp.asarray(rng.uniform(-1, 1, (1, 8, 8, 3)), jnp.float32)
    masks = np.zeros((2, 1, 8, 8), bool)
    masks[0, 0, :2], masks[1, 0, :, :2] = True, True
    tgt = jnp.stack([src.at[:, :2].set(0.5), src.at[:, :2].set(0.5).at[:, :, :2].set(-0.5)])
    m = _metrics(tgt, tgt, src, jnp.asarray(masks))
    assert not m["kept_psnr"][1][0].any() and m["kept_psnr"][1][1].all()  # turn 1 has no earlier edit
    assert np.allclose(m["kept_psnr"][0][1], eval_metrics.PSNR_CAP)
    undone = tgt.at[1, :, :2, 2:].set(src[:, :2, 2:])  # rows 0-1 (outside turn 2's columns) back to the source
    m2 = _metrics(undone, tgt, src, jnp.asarray(masks))
    assert np.allclose(m2["identity_psnr"][0], eval_metrics.PSNR_CAP)
    np.testing.assert_allclose(m2["edit_mae"][0], m["edit_mae"][0])
    expected = float(jnp.mean(jnp.abs(src[:, :2, 2:] - 0.5))) / 2  # MAE on [0, 1]
    np.testing.assert_allclose(m2["kept_mae"][0][1], expected, rtol=1e-5)


def test_edit_persistence_splits_never_made_from_undone():
    """Turn 1 edits rows 0-1, turn 2 is a no-op, turn 3 edits columns 0-1 (two sequences: the batch
    axis must not mix). The ground truth makes and keeps every edit; an output that never makes
    turn 1's edit tracks nothing; one that makes it and draws it back at turn 2 is made and not
    kept; the threshold is halfway from the frame before the edit to its target; an edit back to the
    source's state is not counted (doing nothing makes it)."""
    rng = np.random.default_rng(3)
    src = jnp.asarray(rng.uniform(-1, 1, (2, 8, 8, 3)), jnp.float32)
    masks = np.zeros((3, 2, 8, 8), bool)
    masks[0, :, :2], masks[2, :, :, :2] = True, True
    t1 = src.at[:, :2].set(0.5)
    tgt = jnp.stack([t1, t1, t1.at[:, :, :2].set(-0.5)])
    masks = jnp.asarray(masks)
    made, kept = "edit_made", "edits_kept"
    m = _metrics(tgt, tgt, src, masks)
    assert m[made][1].tolist() == [[True, True], [False, False], [True, True]]  # the no-op is no edit
    assert (m[made][0][[0, 2]] == 1).all()
    assert m[kept][1].tolist() == [[False, False], [True, True], [True, True]] and (m[kept][0][1:] == 1).all()
    # Never made: turn 1 leaves rows 0-1 as the source had them, and so do the later turns.
    never = tgt.at[:, :, :2, 2:].set(src[:, :2, 2:]).at[0, :, :2].set(src[:, :2])
    m = _metrics(never, tgt, src, masks)
    assert (m[made][0][0] == 0).all() and (m[made][0][2] == 1).all() and not m[kept][1].any()
    # Made, then undone at turn 2 in sequence 1 only: kept 0 there at turns 2 and 3, 1 in sequence 0.
    undone = tgt.at[1:, 1, :2, 2:].set(src[1, :2, 2:])
    m = _metrics(undone, tgt, src, masks)
    assert (m[made][0][[0, 2]] == 1).all() and m[kept][0][1:].tolist() == [[1, 0], [1, 0]]
    # By age: turn 1's edit 1 and 2 turns later (row a - 1); nothing is 3 turns old.
    assert m["kept_after"][1].tolist() == [[True, True], [True, True], [False, False]]
    assert m["kept_after"][0][:2].tolist() == [[1, 0], [1, 0]]
    # Two edits of different ages seen at once: turn 1 rows 0-1, turn 2 rows 6-7, turn 3 a no-op; the
    # output draws turn 1's edit back at turn 3 only.
    m2 = np.zeros((3, 2, 8, 8), bool)
    m2[0, :, :2], m2[1, :, 6:] = True, True
    t2 = t1.at[:, 6:].set(-0.5)
    tgt2 = jnp.stack([t1, t2, t2])
    m = _metrics(tgt2.at[2, :, :2].set(src[:, :2]), tgt2, src, jnp.asarray(m2))
    assert m[kept][0][1:].tolist() == [[1, 1], [0.5, 0.5]]
    assert m["kept_after"][0][:2].tolist() == [[1, 1], [0, 0]] and m["kept_after"][1][:2].all()
    # Part of the way: 0.6 of the change is past halfway, 0.4 is not.
    for share, done in ((0.6, 1), (0.4, 0)):
        part = tgt.at[0].set(src + share * (tgt[0] - src))
        assert (_metrics(part, tgt, src, masks)[made][0][0] == done).all()
    # Doing nothing makes no edit.
    assert (_metrics(jnp.broadcast_to(src, tgt.shape), tgt, src, masks)[made][0][[0, 2]] == 0).all()
    # An edit back to the source's state (taking turn 1's edit out again) is not counted.
    back = jnp.stack([t1, src])
    m = _metrics(back, back, src, jnp.asarray(np.broadcast_to(np.asarray(masks[0]), (2, 2, 8, 8))))
    assert m[made][1].tolist() == [[True, True], [False, False]] and not m[kept][1].any()


def test_aggregate_counts_only_valid():
    mean, n = eval_metrics.aggregate(np.array([[1.0, 5.0], [3.0, np.inf]]), np.array([[True, False], [True, False]]))
    assert mean[0] == 2.0 and np.isnan(mean[1]) and list(n) == [2, 0]


# ----------------------------------------------------------------------------- protocols
@pytest.mark.parametrize("seed", range(10_000, 10_020))
def test_roundtrip_ground_truth(seed):
    s = shapes_protocols.roundtrip_sequence(seed, 5)
    assert s.edit_types == ["add", "remove"] * 2 + ["add"]
    assert s.instructions[0] == s.instructions[2] == s.instructions[4] and s.instructions[1] == s.instructions[3]
    for k in (1, 3):
        assert np.array_equal(s.targets[k], s.source)  # after every remove: exactly the source
    for k in (2, 4):
        assert np.array_equal(s.targets[k], s.targets[0])
    changed = (s.targets[0] != s.source).any(-1)
    assert changed.any() and not (changed & ~s.masks[0]).any() and not (changed & ~s.masks[1]).any()


def test_noop_ground_truth():
    s = shapes_protocols.noop_sequence(10_000, 6)
    assert all(np.array_equal(t, s.source) for t in s.targets) and not s.masks.any()
    assert set(s.edit_types) == {"noop"} and len(set(s.instructions)) > 1
    assert np.array_equal(s.source, generate_sequence(10_000, 1, 64, split="heldout_seeds").source)
    with pytest.raises(ValueError, match="unknown protocol"):
        shapes_protocols.make_sequence("bogus", 0, 2)


def test_cli_protocol_ground_truth_scores_perfect_output():
    """Feeding the targets themselves as outputs: PSNR at the cap, identity perfect on round trips."""
    s = shapes_protocols.roundtrip_sequence(10_001, 4)
    d = evaluate.stack_sequences("roundtrip", [s], 4)
    t = lambda a: jnp.asarray(np.swapaxes(a, 0, 1))  # noqa: E731
    m = _metrics(to_float(t(d.targets)), to_float(t(d.targets)), to_float(jnp.asarray(d.source)), t(d.masks))
    assert np.allclose(m["psnr"][0], eval_metrics.PSNR_CAP)
    assert np.allclose(m["identity_psnr"][0], eval_metrics.PSNR_CAP) and m["identity_psnr"][1].all()
    np.testing.assert_allclose(m["source_psnr"][0][1::2], eval_metrics.PSNR_CAP)  # removes return the source


def test_vae_override_replaces_the_runs_vae(ckpt, tmp_path):
    """--vae (a decoder fine-tune, say) is the VAE every checkpoint loads; its errors name it."""
    missing = str(tmp_path / "no_such_vae")
    with pytest.raises(evaluate.EvalError, match="no_such_vae"):
        evaluate.load_checkpoint(ckpt, "params", missing)
    evaluate.load_checkpoint(ckpt, "params", "random")  # the test run's own VAE, named explicitly: loads


def test_moves_history_turn_one_memories_agree(capsys):
    """benchmarks/moves_history.py: at turn 1 the anchor memory (window 4) holds only the source,
    as the previous-frame memory (window 1) does, so both score the same; later turns print a
    paired difference. Pair 48 is the first move at turn 1 of the held-out pairs."""
    import re
    import sys
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import moves_history

    moves_history.main(["--checkpoint", os.path.join(ROOT, "weights", "shapes_stage3"), "--guidance", "1",
                        "--steps", "1", "--num-pairs", "49", "--turns", "1,2"])
    rows = re.findall(r"^\s+(\d)\s+(\d+)\s+(previous|anchor)\s+([0-9.]+)\s+([0-9.]+)$", capsys.readouterr().out, re.M)
    by = {(int(t), m): (float(a), float(b)) for t, _, m, a, b in rows}
    assert sorted({t for t, _ in by}) == [1, 2]
    assert by[1, "previous"] == by[1, "anchor"] and by[2, "previous"] != by[2, "anchor"]


def test_anchor_gate_distances_splits_tokens_by_the_masks_so_far():
    """benchmarks/anchor_gate_distances.py: a token is touched from the first turn a known mask covers
    any of its pixels (unknown masks ignored), and the statistics split the distances by it."""
    import sys
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import anchor_gate_distances as agd

    cells = np.zeros((3, 1, 4, 4), np.float32)  # latent cells, tokens of 2 x 2 cells
    cells[0, 0, 0, 0] = 1  # turn 1: token (0, 0)
    cells[1, 0, 3, 3] = 1  # turn 2: a mask that is not known
    cells[2, 0, 2, 1] = 1  # turn 3: token (1, 0)
    got = agd.touched_tokens(cells, np.array([[True], [False], [True]]), (2, 2))
    want = np.zeros((3, 1, 2, 2), bool)
    want[:, 0, 0, 0], want[2, 0, 1, 0] = True, True
    np.testing.assert_array_equal(got, want)
    dist = np.where(want, 1.0, 0.01)
    stats = agd.split_stats(dist, want)
    assert stats["touched"][0] == 4 and stats["untouched"][0] == 8
    assert stats["untouched"][2][agd.GATES.index(0.05)] == 1.0 and stats["touched"][2][-1] == 0.0


def test_persistence_trade_prices_kept_edits_in_identity(tmp_path, capsys):
    """benchmarks/persistence_trade.py on made-up rows: each method is paired with its own model's
    reference; a setting keeping 0.2 more edits for 1.4 dB of identity costs 0.7 dB per 0.1 kept; one
    whose kept difference is under --min-kept gets no rate; an unknown reference is one error."""
    import gzip
    import sys
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import persistence_trade

    base = {"edits_kept": 0.3, "edit_made": 0.6, "identity_psnr": 25.0}
    shift = {"m/ref": {}, "m/l2": {"edits_kept": 0.2, "identity_psnr": -1.4}, "m/l9": {"edits_kept": 0.01},
             "n/ref": {"identity_psnr": -3.0}, "n/a4": {"edits_kept": -0.1, "identity_psnr": -2.0}}
    rows = [dict(method=m, protocol="edit", sequence=str(q), turn=str(t), metric=k,
                 value=str(v + d.get(k, 0.0) + 0.01 * q))  # per-sequence offsets cancel in the pairs
            for m, d in shift.items() for q in range(4) for t in (1, 2) for k, v in base.items()]
    path = tmp_path / "per_sequence.csv.gz"
    with gzip.open(path, "wt", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    got = {r["method"]: r for r in persistence_trade.trade(rows, ["m/ref", "n/ref"], (1, 2))}
    assert sorted(got) == ["m/l2", "m/l9", "n/a4"] and got["n/a4"]["against"] == "n/ref"
    np.testing.assert_allclose([got["m/l2"]["kept"][0], got["m/l2"]["identity"][0], got["m/l2"]["rate"]],
                               [0.2, -1.4, 0.7], atol=1e-9)
    assert got["m/l9"]["rate"] is None
    np.testing.assert_allclose(got["n/a4"]["rate"], 1.0, atol=1e-9)  # +1 dB of identity per 0.1 kept given up
    assert persistence_trade.main([str(path), "--against", "m/ref,n/ref", "--turns", "1-2"]) == 0
    assert "2 settings with |d kept| >= 0.05: median 0.85" in capsys.readouterr().out
    assert persistence_trade.main([str(path), "--against", "m/nope"]) == 1
    assert "--against m/nope: not a method" in capsys.readouterr().err
