"""The quickstart (anchoredit_jax.quickstart) on a tiny release: pictures written, errors clear."""
import os

import pytest

from anchoredit_jax import quickstart, release

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny_release(tiny_stage1_run, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("qs") / "rel")
    release.export(tiny_stage1_run, out, which="params")  # conftest.py's shared 2-step run
    return out


def test_quickstart_writes_the_pictures(tiny_release, tmp_path, capsys):
    out = tmp_path / "qs"
    rc = quickstart.main(["--weights", tiny_release, "--train-steps", "0", "--turns", "3", "--num-sequences", "2",
                          "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0
    for name in ("contact_sheet.png", "metric_psnr.png", "metric_identity_psnr.png", "summary.json"):
        assert os.path.exists(out / "eval" / name), name
    assert str(out / "eval" / "contact_sheet.png") in printed
    assert quickstart.main(["--weights", tiny_release, "--train-steps", "0", "--out", str(out)]) == 1  # not empty


def test_quickstart_without_weights_says_so(tmp_path, capsys):
    assert quickstart.main(["--weights", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 1
    assert "not a release folder" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "o")
