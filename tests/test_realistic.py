"""nanobrag-torch's realistic-image stages (issue 15 part 3): -amorphous layers and the
detector-response stage.

Each stage must equal running the separate program and adding: the -amorphous layers
equal nonbragg-torch on the same geometry (float64, Python API; and floatadd-torch of
the command lines' float files), the response stage's noise image equals noisify-torch
run on the float image the same run wrote (byte for byte, both modes).  Gradients of
the continuous parameters (layer thickness and density, PSF width, gain) are checked
against central differences.  Small detectors (16-32 px).
"""
from __future__ import annotations

import io
import os
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch

import nanobrag_torch as nb
from nanobrag_torch import cli, floatadd, nonbragg
from nanobrag_torch import noisify as nz

EX = Path(__file__).resolve().parents[1] / "examples"
WATER, AIR = str(EX / "water.stol"), str(EX / "air.stol")
CRYSTAL = ["-cell", "50", "60", "70", "90", "90", "90", "-default_F", "100", "-N", "3"]
GEOM = ["-detpixels", "24", "-pixel", "0.4", "-distance", "40", "-oversample", "2", "-polar", "0.6",
        "-lambda", "1.2"]
LAYERS = ["-amorphous", WATER, "-layer_thickness_mm", "0.15",
          "-amorphous", AIR, "-layer_thickness_mm", "3", "-density", "1.2e-3", "-MW", "29"]
# nonbragg-torch flags for the same detector: nanoBragg's MOSFLM beam centre (detsize + pixel)/2
# plus its 0.5 px offset is nonBragg's -Xbeam/-Ybeam 5.2 mm
NB_GEOM = GEOM + ["-Xbeam", "5.2", "-Ybeam", "5.2", "-nonoise"]


def _main(main, args, cwd):
    old = os.getcwd()
    os.chdir(cwd)
    try:
        buf = io.StringIO()
        with redirect_stdout(buf):
            status = main([str(a) for a in args])
    finally:
        os.chdir(old)
    return status, buf.getvalue()


def _nonbragg(layer_args, mode="spec"):
    cfg = nonbragg.config_from_args(layer_args + NB_GEOM + ["-mode", mode])
    return nonbragg.simulate(cfg).photons


@pytest.mark.parametrize("mode", ["spec", "c-parity"])
def test_layers_equal_nanobragg_plus_nonbragg(mode):
    """nanobrag-torch with two layers = without them + nonbragg-torch of each layer (float64)."""
    m = ["-mode", mode]
    with_layers = nb.simulate(nb.config_from_args(CRYSTAL + GEOM + LAYERS + m)).pixels
    without = nb.simulate(nb.config_from_args(CRYSTAL + GEOM + m)).pixels
    water = _nonbragg(["-stol", WATER, "-thickness", "0.15"], mode)
    air = _nonbragg(["-stol", AIR, "-thickness", "3", "-density", "1.2e-3", "-MW", "29"], mode)
    want = without + water + air
    rel = float((with_layers - want).abs().max() / want.abs().max())
    assert rel < 1e-12, rel
    assert float((water + air).min()) > 1e-3 * float(without.max())      # the layers are not negligible


def test_layers_cli_equal_floatadd(tmp_path):
    """The command lines: float file with a layer = floatadd-torch(without, nonbragg-torch)."""
    base = CRYSTAL + GEOM + ["-nonoise", "-nopgm", "-noprogress"]
    st, out = _main(cli.main, base + ["-amorphous", WATER, "-layer_thickness_mm", "0.15",
                                      "-floatfile", "a.bin", "-intfile", "a.img"], tmp_path)
    assert st == 0, out
    st, out = _main(cli.main, base + ["-floatfile", "b.bin", "-intfile", "b.img"], tmp_path)
    assert st == 0, out
    st, out = _main(nonbragg.main, ["-stol", WATER, "-thickness", "0.15", "-floatfile", "c.bin",
                                    "-intfile", "c.img", "-pgmfile", "c.pgm"] + NB_GEOM, tmp_path)
    assert st == 0, out
    st, out = _main(floatadd.main, ["-outfile", "sum.bin", "b.bin", "c.bin"], tmp_path)
    assert st == 0, out
    a = np.fromfile(tmp_path / "a.bin", dtype="<f4").astype(np.float64)
    s = np.fromfile(tmp_path / "sum.bin", dtype="<f4").astype(np.float64)
    assert a.size == 24 * 24
    assert np.max(np.abs(a - s) / np.max(s)) < 3e-7          # float32 rounding of the parts


def test_density_and_MW_before_any_layer_have_no_effect():
    """nanoBragg.c's own -density/-MW keep their meaning (none) without -amorphous."""
    plain = nb.simulate(nb.config_from_args(CRYSTAL + GEOM + ["-water", "50"])).pixels
    flags = nb.simulate(nb.config_from_args(CRYSTAL + GEOM + ["-water", "50", "-density", "-3",
                                                              "-MW", "0"])).pixels
    assert torch.equal(plain, flags)
    cfg = nb.config_from_args(CRYSTAL + ["-density", "3", "-amorphous", WATER, "-density", "0.9"])
    assert [layer.density_g_cm3 for layer in cfg.background.amorphous] == [0.9]


RESPONSE = ["-psf", "gauss", "-psf_fwhm", "500", "-readout_noise", "2.5", "-flicker", "0.02",
            "-calibration", "0.05", "-gain", "1.7", "-adc", "12", "-seed", "11"]


@pytest.mark.parametrize("mode", ["spec", "c-parity"])
def test_response_noise_equals_noisify(tmp_path, mode):
    """The noise image of nanobrag-torch with response flags = noisify-torch on its float file."""
    args = CRYSTAL + GEOM + ["-amorphous", WATER, "-layer_thickness_mm", "0.05", "-mode", mode, "-fluence", "2e18",
                             "-floatfile", "f.bin", "-intfile", "i.img", "-noisefile", "n.img",
                             "-nopgm", "-noprogress"] + RESPONSE
    st, out = _main(cli.main, args, tmp_path)
    assert st == 0, out
    st, out2 = _main(nz.main, ["-floatfile", "f.bin", "-detpixels_x", "24", "-detpixels_y", "24",
                               "-pixel", "0.4", "-header", "i.img", "-noisefile", "n2.img",
                               "-intfile", "i2.img", "-nopgm", "-mode", mode] + RESPONSE, tmp_path)
    assert st == 0, out2
    a, b = (tmp_path / "n.img").read_bytes(), (tmp_path / "n2.img").read_bytes()
    assert a == b
    counts = np.frombuffer(a[512:], dtype="<u2")
    assert len(set(counts.tolist())) > 50 and counts.max() < 65535      # noisy, not saturated
    # the photon count noisify prints is the run's too
    line = [x for x in out2.splitlines() if x.endswith("overloads)")][-1]
    assert line in out


def test_without_response_flags_noise_is_nanobraggs(tmp_path):
    """No response flag: the noise image stays nanoBragg's Poisson + adc (noisify's default
    calibration error is not applied)."""
    cfg = nb.config_from_args(CRYSTAL + GEOM + ["-seed", "3"])
    assert not cfg.response.enabled
    image = nb.simulate(cfg)
    a = nb.noise_counts(image, seed=3).counts
    b = nb.noise_counts(nb.simulate(cfg), seed=3).counts
    assert np.array_equal(a, b)


@pytest.mark.parametrize("args, flag", [
    (["-layer_thickness_mm", "0.1"], "-layer_thickness_mm"),
    (["-amorphous", "missing.stol"], "-amorphous"),
    (["-psf", "lorentz"], "-psf"),
    (["-gain", "x"], "-gain"),
    (["-amorphous", WATER, "-layer_thickness_mm", "-1"], "-layer_thickness_mm"),
    (["-amorphous", WATER, "-MW", "0"], "-MW"),
    (["-amorphous", WATER, "-density", "-1"], "-density"),
    (["-psf_radius", "1.5"], "-psf_radius"),
])
def test_bad_inputs_one_line_no_outputs(tmp_path, capsys, args, flag):
    st, out = _main(cli.main, CRYSTAL + GEOM + args + ["-floatfile", "f.bin"], tmp_path)
    assert st != 0
    assert list(tmp_path.iterdir()) == []
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and flag in err[0], err


def test_bad_input_message_names_flag(tmp_path, capsys):
    st, _ = _main(cli.main, CRYSTAL + GEOM + ["-layer_thickness_mm", "0.1"], tmp_path)
    err = capsys.readouterr().err.strip().splitlines()
    assert st == 2 and len(err) == 1 and "-layer_thickness_mm" in err[0], err


def test_config_round_trip_keeps_layers():
    cfg = nb.config_from_args(CRYSTAL + LAYERS + ["-psf", "fiber"])
    back = nb.from_dict(nb.to_dict(cfg))
    assert isinstance(back.background.amorphous[1], nb.AmorphousLayer)
    assert back.background.amorphous[1].molecular_weight == 29
    assert back.response.psf == "fiber" and back.response.enabled


# ---------------------------------------------------------------- gradients

def _layer_image(thickness, density):
    cfg = nb.config_from_args(CRYSTAL + ["-detpixels", "16", "-pixel", "0.4", "-distance", "40",
                                         "-oversample", "1", "-amorphous", WATER])
    cfg.background.amorphous[0].thickness_mm = thickness
    cfg.background.amorphous[0].density_g_cm3 = density
    return nb.simulate(cfg).pixels


def test_gradient_thickness_and_density():
    t = torch.tensor(0.12, dtype=torch.float64, requires_grad=True)
    d = torch.tensor(0.95, dtype=torch.float64, requires_grad=True)
    w = torch.linspace(0.5, 1.5, 256, dtype=torch.float64).reshape(16, 16)
    loss = (_layer_image(t, d) * w).sum()
    gt, gd = torch.autograd.grad(loss, (t, d))
    with torch.no_grad():
        for g, f in ((gt, lambda h: (_layer_image(0.12 + h, 0.95) * w).sum()),
                     (gd, lambda h: (_layer_image(0.12, 0.95 + h) * w).sum())):
            h = 1e-4
            fd = (f(h) - f(-h)) / (2 * h)
            assert abs(float(g) - float(fd)) <= 1e-7 * abs(float(fd)), (float(g), float(fd))
            assert float(g) > 0


def _adu(fwhm_um, gain):
    cfg = nb.config_from_args(CRYSTAL + ["-detpixels", "16", "-pixel", "0.1", "-distance", "40",
                                         "-oversample", "1", "-psf", "gauss", "-psf_radius", "3"])
    cfg.response.psf_fwhm_um = fwhm_um
    cfg.response.gain = gain
    return nb.simulate(cfg).expected_adu()


def test_gradient_psf_width_and_gain():
    fw = torch.tensor(150.0, dtype=torch.float64, requires_grad=True)
    g = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    w = torch.linspace(-1.0, 2.0, 256, dtype=torch.float64).reshape(16, 16)
    loss = (_adu(fw, g) * w).sum()
    gfw, gg = torch.autograd.grad(loss, (fw, g))
    with torch.no_grad():
        h = 1e-3
        fd_fw = ((_adu(150.0 + h, 1.3) * w).sum() - (_adu(150.0 - h, 1.3) * w).sum()) / (2 * h)
        fd_g = ((_adu(150.0, 1.3 + h) * w).sum() - (_adu(150.0, 1.3 - h) * w).sum()) / (2 * h)
    assert abs(float(gfw) - float(fd_fw)) <= 1e-6 * abs(float(fd_fw)) + 1e-12, (float(gfw), float(fd_fw))
    assert abs(float(gg) - float(fd_g)) <= 1e-9 * abs(float(fd_g)), (float(gg), float(fd_g))
    assert float(gfw) != 0.0


def test_layer_tables_reread_for_the_other_mode():
    """A config parsed in spec mode and run in c-parity reads its layer tables by c-parity's
    rules (inputs.for_mode): the same image as parsing in c-parity."""
    args = CRYSTAL + GEOM + ["-amorphous", WATER, "-layer_thickness_mm", "0.15"]
    spec_cfg = nb.config_from_args(args)
    a = nb.simulate(spec_cfg, mode="c-parity").pixels
    b = nb.simulate(nb.config_from_args(args + ["-mode", "c-parity"])).pixels
    assert torch.equal(a, b)


def test_sweep_with_layers_equals_single_runs():
    """-nimages: each image (layers rendered once for the sweep) equals its single run."""
    args = CRYSTAL + GEOM + ["-amorphous", WATER, "-layer_thickness_mm", "0.15", "-osc", "2"]
    images = list(nb.Simulator(nb.config_from_args(args + ["-nimages", "2"])).sweep(2))
    single = nb.simulate(nb.config_from_args(args + ["-phi", "2"])).pixels
    assert torch.equal(images[1].pixels, single)
    assert not torch.equal(images[0].pixels, images[1].pixels)


def test_sample_thickness_alias_spec_only(tmp_path, capsys):
    """-sample_thickness_mm (the issue's spelling) is -layer_thickness_mm in spec mode; in
    c-parity it is refused (nanoBragg.c reads the word as -sample_thick; modes.md row 19)."""
    base = CRYSTAL + ["-amorphous", WATER]
    a = nb.config_from_args(base + ["-sample_thickness_mm", "0.3"])
    b = nb.config_from_args(base + ["-layer_thickness_mm", "0.3"])
    assert a.background.amorphous[0].thickness_mm == b.background.amorphous[0].thickness_mm == 0.3
    nb.config_from_args(base + ["-layer_thickness_mm", "0.3", "-mode", "c-parity"])
    st, _ = _main(cli.main, base + GEOM + ["-sample_thickness_mm", "0.3", "-mode", "c-parity"], tmp_path)
    err = capsys.readouterr().err.strip().splitlines()
    assert st == 2 and len(err) == 1 and "-layer_thickness_mm" in err[0] and "-sample_thick" in err[0], err
    assert list(tmp_path.iterdir()) == []
