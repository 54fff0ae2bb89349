"""JSONL + WebDataset readers: round trip, policies, and one clear error per problem."""
import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from anchoredit_jax.data import jsonl, shapes_edit as se
from anchoredit_jax.data.jsonl import DataFormatError


def _png(path, arr, mode=None):
    img = Image.fromarray(arr) if mode is None else Image.fromarray(arr).convert(mode)
    img.save(path)


def _write(path, lines):
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return str(path)


@pytest.fixture
def imgs(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        _png(tmp_path / f"{name}.png", rng.integers(0, 255, (24, 32, 3), np.uint8))
    _png(tmp_path / "small.png", rng.integers(0, 255, (20, 32, 3), np.uint8))
    _png(tmp_path / "m.png", (rng.random((24, 32)) > 0.5).astype(np.uint8) * 255)
    return tmp_path


def test_round_trip(tmp_path):
    seqs = [se.generate_sequence(i, 3, (32, 40), noop_prob=0.3) for i in range(3)]
    path = jsonl.export_jsonl(seqs, str(tmp_path / "out"))
    records = jsonl.read_jsonl(path)
    assert len(records) == 3
    for seq, rec in zip(seqs, records):
        got = jsonl.load_sequence(rec)
        for field in ("source", "targets", "masks", "has_target", "has_mask"):
            a, b = getattr(seq, field), getattr(got, field)
            assert a.dtype == b.dtype and np.array_equal(a, b), field
        assert got.instructions == seq.instructions and got.edit_types == seq.edit_types and got.seed == seq.seed
        pair = jsonl.load_pair(rec, 1)
        np.testing.assert_array_equal(pair.source, seq.targets[0])
        np.testing.assert_array_equal(pair.targets[0], seq.targets[1])


def test_optional_fields_image_root_and_resize(imgs, tmp_path):
    sub = tmp_path / "meta"
    sub.mkdir()
    path = _write(sub / "d.jsonl", [{"source": "a.png", "turns": [
        {"instruction": "x", "target": "b.png", "mask": "m.png"}, {"instruction": "y"},
        {"instruction": "z", "target": str(imgs / "c.png")}]}])
    with pytest.raises(DataFormatError, match=r"d.jsonl:1: source image not found"):
        jsonl.read_jsonl(path)  # paths are relative to the JSONL folder by default
    (rec,) = jsonl.read_jsonl(path, image_root=str(imgs))
    seq = jsonl.load_sequence(rec, 16)  # 24x32 -> cover 16x16 -> centre crop
    assert seq.source.shape == (16, 16, 3) and seq.targets.shape == (3, 16, 16, 3) and seq.masks.dtype == bool
    np.testing.assert_array_equal(seq.has_target, [True, False, True])
    np.testing.assert_array_equal(seq.has_mask, [True, False, False])
    assert not seq.targets[1].any() and not seq.masks[1].any() and seq.masks[0].any()
    full = jsonl.load_sequence(rec, (24, 32))
    np.testing.assert_array_equal(full.source, np.asarray(Image.open(imgs / "a.png")))
    assert jsonl.load_sequence(rec, (12, 20), num_turns=1).targets.shape == (1, 12, 20, 3)
    with pytest.raises(DataFormatError, match="turn 1 is not a complete pair"):
        jsonl.load_pair(rec, 1)


def test_mode_policy(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:4, :, 3] = 255  # top opaque red, bottom transparent -> white
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    _png(tmp_path / "grey.png", np.full((8, 8), 77, np.uint8))
    pal = Image.fromarray(np.full((8, 8, 3), 9, np.uint8)).convert("P", palette=Image.Palette.ADAPTIVE)
    pal.save(tmp_path / "pal.png")
    path = _write(tmp_path / "d.jsonl", [{"source": "rgba.png", "turns": [
        {"instruction": "a", "target": "grey.png"}, {"instruction": "b", "target": "pal.png"}]}])
    seq = jsonl.load_sequence(jsonl.read_jsonl(path)[0])
    assert (seq.source[:4] == (200, 0, 0)).all() and (seq.source[4:] == 255).all()
    assert (seq.targets[0] == 77).all() and (seq.targets[1] == 9).all()
    Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(tmp_path / "deep.png")  # 16-bit
    Image.new("CMYK", (8, 8)).save(tmp_path / "cmyk.jpg")
    for bad in ("deep.png", "cmyk.jpg"):
        path = _write(tmp_path / "e.jsonl", [{"source": "rgba.png", "turns": [{"instruction": "a", "target": bad}]}])
        with pytest.raises(DataFormatError, match=r"e.jsonl:1: turn 0 target .* unsupported mode"):
            jsonl.read_jsonl(path)


GOOD = {"source": "a.png", "turns": [{"instruction": "do it", "target": "b.png"}]}


@pytest.mark.parametrize("line, message", [
    ('{"source": "a.png", "turns": [', r"d.jsonl:3: malformed JSON"),
    ({"turns": [{"instruction": "x"}]}, r"d.jsonl:3: missing key 'source'"),
    ({"source": "a.png", "turns": []}, r"d.jsonl:3: 'turns' must be a non-empty list"),
    ({"source": "a.png", "turns": [{"instruction": "  ", "target": "b.png"}]},
     r"d.jsonl:3: turn 0 has an empty instruction"),
    ({"source": "a.png", "turns": [{"target": "b.png"}]}, r"d.jsonl:3: turn 0 is missing key 'instruction'"),
    ({"source": "nope.png", "turns": [{"instruction": "x"}]}, r"d.jsonl:3: source image not found"),
    ({"source": "a.png", "turns": [{"instruction": "x", "target": "junk.png"}]},
     r"d.jsonl:3: turn 0 target image .* cannot be read"),
    ({"source": "a.png", "turns": [{"instruction": "x", "target": "small.png"}]}, r"d.jsonl:3: turn 0 target is 32x20"),
    ({"source": "a.png", "turns": [{"instruction": "x", "mask": "small.png"}]}, r"d.jsonl:3: turn 0 mask is 32x20"),
    ([1, 2], r"d.jsonl:3: expected a JSON object"),
])
def test_errors_name_the_line(imgs, line, message):
    (imgs / "junk.png").write_bytes(b"this is not a png at all")
    path = _write(imgs / "d.jsonl", [GOOD, "", line])  # line 2 is blank: still counted
    with pytest.raises(DataFormatError, match=message):
        jsonl.read_jsonl(path)


def test_truncated_image_fails_on_load_with_line(imgs):
    data = (imgs / "b.png").read_bytes()
    (imgs / "cut.png").write_bytes(data[: len(data) // 2])
    path = _write(imgs / "d.jsonl", [GOOD, {"source": "a.png", "turns": [{"instruction": "x", "target": "cut.png"}]}])
    records = jsonl.read_jsonl(path)  # the header is fine
    with pytest.raises(DataFormatError, match=r"d.jsonl:2: turn 0 target image .*cut.png is corrupt"):
        jsonl.load_sequence(records[1])


def _add(tf, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def _encoded(arr, fmt):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def test_webdataset_tar(tmp_path):
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 255, (16, 24, 3), np.uint8) for _ in range(3)]
    path = tmp_path / "shard-000.tar"
    with tarfile.open(path, "w") as tf:
        for k, f in enumerate(frames):
            _add(tf, f"s/one.{k}.png", _encoded(f, "PNG"))
        _add(tf, "s/one.json",
             json.dumps({"instructions": [{"en": "add a cat", "zh": "x"}, {"en": "make it red"}]}).encode())
        _add(tf, "two.0.jpg", _encoded(frames[0], "JPEG"))
        _add(tf, "two.1.jpg", _encoded(frames[1], "JPEG"))
        _add(tf, "two.json", json.dumps({"instructions": ["zoom"]}).encode())
    one, two = jsonl.read_webdataset(str(path))
    seq = jsonl.load_sequence(one)
    np.testing.assert_array_equal(seq.source, frames[0])
    np.testing.assert_array_equal(seq.targets, np.stack(frames[1:]))
    assert seq.instructions == ["add a cat", "make it red"] and not seq.has_mask.any()
    assert jsonl.load_sequence(two, 8).targets.shape == (1, 8, 8, 3) and two.turns[0].instruction == "zoom"

    bad = tmp_path / "bad.tar"
    with tarfile.open(bad, "w") as tf:
        _add(tf, "k.0.png", _encoded(frames[0], "PNG"))
        _add(tf, "k.1.png", _encoded(frames[1], "PNG"))
        _add(tf, "k.json", json.dumps({"instructions": [{"en": "a"}, {"en": "b"}]}).encode())
    with pytest.raises(DataFormatError, match=r"bad.tar:k: 'instructions' must be a list of 1"):
        jsonl.read_webdataset([str(bad)])
