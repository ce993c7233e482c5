"""Image folders and splits on real digits, and every bad input the issue lists."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from edgetl.modalities.image import scan_folder, stratified_split
from edgetl.errors import DataError


def test_scan_digits(digits_dir):
    folder = scan_folder(digits_dir)
    assert folder.labels == tuple(str(d) for d in range(10))
    assert len(folder.samples) == 1000
    assert set(folder.counts().values()) == {100}


def test_split_is_stratified_and_deterministic(digits_dir):
    y = scan_folder(digits_dir).targets
    tr1, va1 = stratified_split(y, 0.2, seed=3)
    tr2, va2 = stratified_split(y, 0.2, seed=3)
    tr3, _ = stratified_split(y, 0.2, seed=4)
    assert np.array_equal(tr1, tr2) and np.array_equal(va1, va2)
    assert not np.array_equal(tr1, tr3)
    assert set(tr1).isdisjoint(va1) and len(tr1) + len(va1) == len(y)
    assert np.bincount(y[va1]).tolist() == [20] * 10


@pytest.fixture
def small(tmp_path, digits_dir):
    root = tmp_path / "data"
    for cls in ("0", "1"):
        (root / cls).mkdir(parents=True)
        for p in sorted((digits_dir / cls).iterdir())[:5]:
            shutil.copy(p, root / cls / p.name)
    return root


def test_image_modes_are_accepted(small):
    src = Image.open(next((small / "0").iterdir()))
    src.convert("P").save(small / "0" / "palette.png")
    src.convert("RGBA").save(small / "0" / "rgba.png")
    src.convert("CMYK").save(small / "0" / "cmyk.jpg")
    Image.fromarray((np.asarray(src.convert("L"), np.uint16) * 257)).save(small / "0" / "deep.png")
    folder = scan_folder(small)
    assert not folder.skipped and len(folder.samples) == 14
    from edgetl.modalities.image import PreprocessSpec, preprocess

    for name in ("palette.png", "rgba.png", "cmyk.jpg", "deep.png"):
        assert preprocess(small / "0" / name, PreprocessSpec(32)).shape == (3, 32, 32)


def test_corrupt_file_is_skipped_with_warning_or_rejected_when_strict(small):
    (small / "1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (small / "1" / "notes.txt").write_text("hello")
    with pytest.warns(UserWarning, match="skipped 2 unreadable"):
        folder = scan_folder(small)
    assert len(folder.skipped) == 2 and len(folder.samples) == 10
    with pytest.raises(DataError, match="broken.png|notes.txt"):
        scan_folder(small, strict=True)


@pytest.mark.parametrize("case, message", [
    ("missing", "no such folder"),
    ("one_class", "need at least 2"),
    ("empty_class", "no readable images"),
    ("file", "not a folder"),
])
def test_bad_folders(tmp_path, small, case, message):
    if case == "missing":
        target = tmp_path / "nope"
    elif case == "one_class":
        shutil.rmtree(small / "1")
        target = small
    elif case == "empty_class":
        (small / "2").mkdir()
        target = small
    else:
        target = small / "0" / sorted(p.name for p in (small / "0").iterdir())[0]
    with pytest.raises(DataError, match=message):
        scan_folder(target)
