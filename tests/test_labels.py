"""Labels for learning (-labels FILE.h5, nanobrag_torch.labels): the predicted spot
positions are where the spots' pixels peak, the mask is the image above the threshold,
a batch writes one label file per shot (in the manifest, byte-identical when re-rendered)."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from nanobrag_torch.cli import main

h5py = pytest.importorskip("h5py", reason="h5py not installed (pip install 'nanobrag-torch[formats]')")

ONE = ["-cell", "100", "100", "100", "90", "90", "90", "-default_F", "100", "-N", "5", "-lambda", "1",
       "-distance", "100", "-pixel", "0.2", "-detpixels", "48", "-misset", "10", "20", "30",
       "-nonoise", "-nopgm", "-noprogress"]


def test_single_image_spots_peak_at_predicted_pixels_and_mask_is_image_above_threshold(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(ONE + ["-floatfile", "f.bin", "-labels", "l.h5", "-label_threshold", "5"]) == 0
    img = np.fromfile("f.bin", np.float32).reshape(48, 48)
    with h5py.File("l.h5") as fh:
        assert fh.attrs["threshold"] == 5.0
        mask, spot = fh["mask"][:], fh["spot"][:]
        sp = {k: fh["spots"][k][:] for k in fh["spots"]}
    assert np.array_equal(mask.astype(bool), img > 5)                # pure Bragg image
    assert np.array_equal(spot > 0, mask.astype(bool))
    bright = 0
    for i in range(len(sp["hkl"])):
        own = spot == i + 1
        assert sp["npix"][i] == own.sum()
        assert sp["intensity"][i] == pytest.approx(img[own].astype(np.float64).sum(), rel=1e-12)
        if sp["r"][i] < 1 and own.sum() >= 2:          # a spot on the Ewald sphere, several pixels
            s, f = np.unravel_index(np.argmax(np.where(own, img, -1.0)), img.shape)
            assert abs(f - sp["fast"][i]) <= 1 and abs(s - sp["slow"][i]) <= 1, (i, sp["hkl"][i])
            bright += 1
    assert bright >= 20
    # the brightest pixel of the image lies in a listed spot whose prediction is within 1 px
    s, f = np.unravel_index(np.argmax(img), img.shape)
    i = spot[s, f] - 1
    assert i >= 0 and abs(f - sp["fast"][i]) <= 1 and abs(s - sp["slow"][i]) <= 1


def test_batch_labels_numbered_in_manifest_and_shot_alone_identical(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "b").mkdir()
    (tmp_path / "one").mkdir()
    small = [a if a != "48" else "24" for a in ONE]
    outs = lambda d: ["-floatfile", f"{d}/s.bin", "-intfile", f"{d}/s.img", "-labels", f"{d}/l.h5",  # noqa: E731
                      "-manifest", f"{d}/m.csv", "-shots", "2", "-seed", "3"]
    assert main(small[:-7] + small[-3:] + outs("b")) == 0       # without -misset (shots draw it)
    rows = list(csv.DictReader(open(tmp_path / "b" / "m.csv")))
    assert rows[1]["files"].split()[-1] == "b/l_00002.h5"
    assert main(small[:-7] + small[-3:] + outs("one") + ["-shot", "2"]) == 0
    assert (tmp_path / "one" / "l_00002.h5").read_bytes() == (tmp_path / "b" / "l_00002.h5").read_bytes()


@pytest.mark.parametrize("argv,word", [
    (["-label_threshold", "5"], "-label_threshold: the threshold of the -labels mask"),
    (["-labels", "l.h5", "-label_threshold", "-1"], "-label_threshold"),
])
def test_bad_label_flags_one_line_no_files(tmp_path, monkeypatch, capsys, argv, word):
    monkeypatch.chdir(tmp_path)
    assert main(ONE + argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and word in err[0], err
    assert list(tmp_path.iterdir()) == []
