"""Held-out validation during training (samples.Stage1Validation): the loss covers val.loss_examples
pairs in val.batch_size chunks, the preview shows the first val.num_examples, whichever the metric."""
import os

import flax.linen as nn
import jax
import numpy as np
import pytest
from PIL import Image

from anchoredit_jax import samples
from anchoredit_jax import text_encoder as te
from anchoredit_jax import train as train_lib
from anchoredit_jax.config_lib import load_config
from anchoredit_jax.model import init_params

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def setup():
    cfg = load_config(os.path.join(ROOT, "configs/stage1_shapes.py"), "test")
    mcfg, model, enc, frozen = train_lib.load_model_and_encoders(cfg)
    params = nn.unbox(init_params(mcfg, jax.random.PRNGKey(0), latent_hw=(8, 8)))
    return cfg, model, enc, frozen, params, te.make_tokenize_fn(cfg.text.max_length)


def _val(setup, **val):
    cfg, model, enc, frozen, params, tokenize = setup
    cfg = cfg.copy_and_resolve_references()
    cfg.val.update(val)
    return samples.Stage1Validation(cfg, enc, tokenize, model), params, frozen


def test_the_loss_is_the_mean_over_every_pair_of_every_chunk(setup):
    """6 pairs in chunks of 4 and 2, chunk i drawing its noise from fold_in(key, i): per_pair is the
    chunks' per-pair losses in order, val_loss their mean; the pairs past the preview count."""
    val, params, frozen = _val(setup, num_examples=2, loss_examples=6, batch_size=4)
    assert val.chunks == [(0, 4), (4, 6)]
    key = jax.random.PRNGKey(1234)
    l0 = np.asarray(val._loss(params, frozen, val.batch(0, 4), jax.random.fold_in(key, 0)))
    l1 = np.asarray(val._loss(params, frozen, val.batch(4, 6), jax.random.fold_in(key, 1)))
    assert l0.shape == (4,) and l1.shape == (2,)
    per_pair, latents = val.per_pair(params, frozen)
    assert latents is None
    np.testing.assert_allclose(per_pair, np.concatenate([l0, l1]), rtol=1e-6)
    got = val.run(params, frozen, 1, "", False)["val_loss"]
    np.testing.assert_allclose(got, (4 * l0.mean() + 2 * l1.mean()) / 6, rtol=1e-6)
    assert abs(l0.mean() - l1.mean()) > 1e-6 * abs(l0.mean())  # else a wrong weighting could pass
    few, _, _ = _val(setup, num_examples=2, loss_examples=4, batch_size=4)
    np.testing.assert_allclose(few.run(params, frozen, 1, "", False)["val_loss"], l0.mean(), rtol=1e-6)


def test_the_preview_shows_the_first_pairs_whichever_the_metric(setup, tmp_path):
    """A 3-row sheet spanning two chunks of 2; the same pictures when the loss is the flow loss
    (sampled for the preview only) and when it is the sampled latents' MSE (one pass for both)."""
    sheets = {}
    for metric in ("flow_loss", "sample_mse"):
        val, params, frozen = _val(setup, num_examples=3, loss_examples=6, batch_size=2, sample_every=1,
                                   metric=metric)
        out = val.run(params, frozen, 1, str(tmp_path / metric), True)
        assert np.isfinite(out["val_loss"]) and out["val_loss"] > 0
        sheets[metric] = np.asarray(Image.open(tmp_path / metric / "samples" / "step_0000001.png"))
    np.testing.assert_array_equal(sheets["flow_loss"], sheets["sample_mse"])
    two, params, frozen = _val(setup, num_examples=2, loss_examples=6, batch_size=2, sample_every=1)
    two.run(params, frozen, 1, str(tmp_path / "two"), True)
    two_rows = np.asarray(Image.open(tmp_path / "two" / "samples" / "step_0000001.png"))
    assert sheets["flow_loss"].shape[0] > two_rows.shape[0] and sheets["flow_loss"].shape[1] == two_rows.shape[1]


@pytest.mark.parametrize("val, match", [
    ({"num_examples": 8, "loss_examples": 4}, "num_examples .8, the preview pairs. must not exceed"),
    ({"loss_examples": 0}, "val.loss_examples must be an integer >= 1, got 0"),
    ({"batch_size": -1}, "val.batch_size must be an integer >= 1, got -1"),
    ({"metric": "psnr"}, "val.metric must be one of .'flow_loss', 'sample_mse'., got 'psnr'"),
])
def test_bad_counts_are_named(setup, val, match):
    with pytest.raises(ValueError, match=match):
        _val(setup, **val)
