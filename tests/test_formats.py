"""CBF, NeXus and PNG outputs (io.cbf, io.nexus, io.png, io.experiment, formats.py).

Files are read back with the readers on PyPI (fabio, h5py + nxmx, Pillow), and
the geometry with the arithmetic dxtbx itself applies (FormatCBFMini._detector,
dxtbx.nexus.get_dxtbx_detector for a single panel, get_dxtbx_scan), restated
here since dxtbx cannot be installed from PyPI. Tolerances: 1e-6 mm for
positions, 1e-9 for unit vectors.
"""
from __future__ import annotations

import io
import sys
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch

import nanobrag_torch as nb
from nanobrag_torch.cli import FlagError, config_from_args, main
from nanobrag_torch.errors import ConfigError
from nanobrag_torch.io import cbf, experiment, nexus, png
from nanobrag_torch.io.smv import fit_header_bytes, format_header

fabio = pytest.importorskip("fabio")
h5py = pytest.importorskip("h5py")
pytest.importorskip("hdf5plugin")
nxmx = pytest.importorskip("nxmx")
Image = pytest.importorskip("PIL.Image")

MM, UNIT = 1e-6, 1e-9
MCSTAS_TO_IMGCIF = np.diag([-1.0, 1.0, -1.0])
SMALL = ["-cell", "50", "60", "70", "90", "90", "90", "-default_F", "100", "-N", "3",
         "-lambda", "1", "-distance", "80", "-pixel", "0.4", "-detpixels_f", "24",
         "-detpixels_s", "20", "-noprogress"]


def simulate(*extra):
    """(the Image, its float32 pixels)"""
    with torch.no_grad():
        result = nb.simulate(config_from_args(SMALL + list(extra)))
    return result, result.float32


# ----------------------------------------------------------------------------- dxtbx arithmetic

def dxtbx_minicbf(path):
    """What FormatCBFMini reads from a miniCBF: its header dictionary (FormatCBFMini._start)
    and the detector, beam and scan it builds (_detector, DetectorFactory.simple, _scan)."""
    raw = Path(path).read_bytes()
    assert raw[:6] == b"###CBF"                                    # FormatCBF.understand
    cif = raw[:raw.index(b"--CIF-BINARY-FORMAT-SECTION--")].decode("ascii")
    conv = [r for r in cif.split("\n") if "_array_data.header_convention" in r]
    assert conv and "GENERIC_MINI" in conv[0]                       # FormatCBFMini.understand
    assert not any(w in conv[0] for w in ("PILATUS", "SLS", "?", "ADSC"))   # not a subclass
    for r in cif.split("\n"):
        if "# Detector" in r:
            assert not any(w in r.upper() for w in ("PILATUS", "EIGER", "ADSC", "TIMEPIX"))
    header = {}
    for record in cif.split("\n"):
        if record[:1] != "#":
            continue
        if len(record[1:].split()) <= 2 and record.count(":") == 2 and "Image_path" not in record:
            header["timestamp"] = record[1:].strip()
            continue
        tokens = record.replace("=", "").replace(":", "").split()
        header[tokens[1]] = " ".join(tokens[2:])
    mime, inside = [], False
    for record in raw.split(b"\n"):
        record = record.decode("ascii", "replace")
        if "--CIF-BINARY-FORMAT-SECTION--" in record:
            inside = True
        elif inside and record[0:1] == "X":
            mime.append(record)
        if inside and not record.strip():
            break
    for record in mime:
        token, value = record.split(":")
        header[token.strip()] = value.strip()
    distance = float(header["Detector_distance"].split()[0])
    beam_x, beam_y = map(float, header["Beam_xy"].replace("(", "").replace(")", "")
                         .replace(",", "").split()[:2])
    pixel_x, pixel_y = map(float, header["Pixel_size"].replace("m", "").replace("x", "").split())
    distance_mm = distance * 1000.0
    centre_mm = (beam_x * pixel_x * 1000.0, beam_y * pixel_y * 1000.0)
    fast, slow = np.array([1.0, 0, 0]), np.array([0, -1.0, 0])
    origin = np.array([0, 0, -1.0]) * distance_mm - fast * centre_mm[0] - slow * centre_mm[1]
    return dict(header=header, origin=origin, fast=fast, slow=slow,
                wavelength=float(header["Wavelength"].split()[0]),
                pixel_mm=(1000 * pixel_x, 1000 * pixel_y),
                size=(int(header["X-Binary-Size-Fastest-Dimension"]),
                      int(header["X-Binary-Size-Second-Dimension"])),
                overload=int(header["Count_cutoff"].split()[0]),
                scan=(float(header["Start_angle"].split()[0]),
                      float(header["Angle_increment"].split()[0]),
                      float(header["Exposure_period"].split()[0])))


def dxtbx_nexus(path):
    """What FormatNXmx builds from an NXmx file with one module (the flat-detector branch of
    dxtbx.nexus.get_dxtbx_detector, get_dxtbx_goniometer, get_dxtbx_scan), imgCIF frame, mm."""
    import hdf5plugin  # noqa: F401  (the data's compression filter)
    with h5py.File(path, "r") as fh:
        entry = nxmx.NXmx(fh).entries[0]
        assert entry.definition == "NXmx"
        det = entry.instruments[0].detectors[0]
        module = det.modules[0]

        def axis(direction):
            rot = [t for t in nxmx.get_dependency_chain(direction.depends_on)
                   if t.transformation_type == "rotation"]
            R = nxmx.get_cumulative_transformation(rot)[0, :3, :3] if rot else np.identity(3)
            return MCSTAS_TO_IMGCIF @ R @ direction.vector

        A = nxmx.get_cumulative_transformation(
            nxmx.get_dependency_chain(module.fast_pixel_direction.depends_on))
        offset = module.fast_pixel_direction.offset
        origin = MCSTAS_TO_IMGCIF @ ((offset.to("mm").magnitude if offset is not None
                                      else np.zeros(3)) + A[0, :3, 3])
        out = dict(
            origin=origin, fast=axis(module.fast_pixel_direction),
            slow=axis(module.slow_pixel_direction),
            pixel_mm=(module.fast_pixel_direction[()].to("mm").magnitude.item(),
                      module.slow_pixel_direction[()].to("mm").magnitude.item()),
            size=(int(module.data_size[-1]), int(module.data_size[-2])),
            wavelength=float(entry.instruments[0].beams[0].incident_wavelength.to("angstrom")
                             .magnitude),
            thickness_mm=float(det.sensor_thickness.to("mm").magnitude),
            material=det.sensor_material, overload=det.saturation_value,
            mask=np.asarray(det.pixel_mask[()]), data=np.asarray(fh["/entry/data/data"][()]),
            lab_to_mcstas=np.asarray(det._handle.attrs["nanobrag_lab_to_mcstas"]),
            axis=None, scan=None)
        sample = entry.samples[0]
        if sample.depends_on is not None:
            chain = nxmx.get_dependency_chain(sample.depends_on)
            axes = nxmx.get_rotation_axes(chain)
            out["axis"] = MCSTAS_TO_IMGCIF @ axes.axes[0]
            phi = sample.depends_on
            start = phi[()].to("degree").magnitude
            width = float(np.median(phi.end[()].to("degree").magnitude - start))
            out["scan"] = (float(start[0]), width, len(phi))
    return out


def lab_to_imgcif_cbf(exp, v):
    """miniCBF's implied frame: x along fast, y along -slow, z against the beam."""
    return np.array([np.dot(v, exp.fdet), -np.dot(v, exp.sdet), -np.dot(v, exp.beam_dir)])


# ----------------------------------------------------------------------------- CBF

@pytest.mark.parametrize("extra", [
    ["-phi", "3", "-osc", "0.5", "-roi", "2", "20", "1", "18"],      # MOSFLM, oscillation, ROI
    ["-xds", "-Xbeam", "4.1", "-Ybeam", "3.3"],                      # XDS still
    ["-denzo", "-detector_thick", "300", "-detector_abs", "500"],    # sensor
], ids=["mosflm_osc_roi", "xds", "denzo_thick"])
def test_cbf_round_trip_through_fabio_and_dxtbx_arithmetic(tmp_path, extra):
    sim, image = simulate(*extra)
    exp = experiment.from_image(sim)
    assert cbf.geometry_problem(exp) is None
    counts = np.rint(image * 37.0)
    path = tmp_path / "img_00001.cbf"
    assert cbf.write_cbf(path, counts, exp) == [str(path)]

    got = fabio.open(str(path))
    want = exp.counts(counts)
    if exp.mask is not None:
        want[~exp.mask] = -1
        assert (want == -1).sum() == (~exp.mask).sum() > 0
    assert got.data.dtype == np.int32 and np.array_equal(got.data, want)

    d = dxtbx_minicbf(path)
    g = sim.setup.geom
    assert d["size"] == (g.fpixels, g.spixels)
    assert d["wavelength"] == float(sim.config.beam.wavelength_A)
    assert d["pixel_mm"] == (g.pixel_size_m * 1000, g.pixel_size_m * 1000)
    assert d["overload"] == exp.saturation
    pix0 = np.array(exp.pix0_m) * 1000.0
    assert np.abs(d["origin"] - lab_to_imgcif_cbf(exp, pix0)).max() < MM
    assert np.abs(d["fast"] - lab_to_imgcif_cbf(exp, exp.fdet)).max() < UNIT
    assert np.abs(d["slow"] - lab_to_imgcif_cbf(exp, exp.sdet)).max() < UNIT
    # the beam centre of the kernel (header convention) is where dxtbx puts the beam
    assert abs(d["header"]["Beam_xy"].count(",") - 1) == 0
    centre = -d["origin"][:2] * np.array([1, -1])
    assert np.abs(centre - np.array([float(g.Fbeam), float(g.Sbeam)]) * 1000).max() < MM
    assert abs(-d["origin"][2] - float(g.distance) * 1000) < MM
    phi0, osc = exp.phi_start_deg[0], exp.phi_width_deg[0]
    assert d["scan"] == (phi0, osc, exp.exposure_s)
    if exp.sensor_thickness_m > 0:
        assert float(d["header"]["Silicon"].split()[2]) == exp.sensor_thickness_m


@pytest.mark.parametrize("extra, why", [
    (["-detector_roty", "5"], "not perpendicular"),
    (["-twotheta", "10"], "not perpendicular"),
    (["-adxv"], "mirrored"),
    (["-dials", "-osc", "1"], "spindle"),
    (["-detector_rotx", "3", "-osc", "1"], "spindle"),
    (["-curved_det"], "curved"),
])
def test_cbf_refuses_geometry_it_cannot_describe(tmp_path, monkeypatch, extra, why):
    monkeypatch.chdir(tmp_path)
    cfg = config_from_args(SMALL + extra)
    assert why in cbf.geometry_problem(experiment.from_config(cfg))
    with pytest.raises(FlagError, match=f"{why}.*-nexusfile"):
        config_from_args(SMALL + extra + ["-cbffile", "x_00001.cbf"])
    assert list(tmp_path.iterdir()) == []


def test_cbf_stack_writes_numbered_files(tmp_path):
    sim, image = simulate("-phi", "10", "-osc", "1")
    exp = experiment.from_image(sim)
    import dataclasses
    sweep = dataclasses.replace(exp, phi_start_deg=(10.0, 11.0), phi_width_deg=(1.0, 1.0))
    stack = np.stack([image, 2 * image])
    paths = cbf.write_cbf(tmp_path / "sweep_###.cbf", stack, sweep)
    assert [Path(p).name for p in paths] == ["sweep_001.cbf", "sweep_002.cbf"]
    assert [dxtbx_minicbf(p)["scan"][:2] for p in paths] == [(10.0, 1.0), (11.0, 1.0)]
    assert np.array_equal(fabio.open(paths[1]).data, sweep.counts(2 * image))
    with pytest.raises(ValueError, match="#"):
        cbf.write_cbf(tmp_path / "sweep.cbf", stack, sweep)


# ----------------------------------------------------------------------------- NeXus

@pytest.mark.parametrize("extra", [
    ["-phi", "2", "-osc", "1"],
    ["-detector_rotx", "3", "-detector_roty", "-4", "-detector_rotz", "7", "-twotheta", "15",
     "-pivot", "sample", "-osc", "0.25", "-mask", "MASK"],
    ["-xds", "-twotheta", "-20", "-detector_thick", "450"],
    ["-fdet_vector", "0", "0.6", "0.8", "-sdet_vector", "0", "0.8", "-0.6",
     "-odet_vector", "1", "0", "0", "-beam_vector", "1", "0", "0",
     "-spindle_axis", "0", "0.6", "0.8", "-pix0_vector_mm", "90", "5", "-6", "-osc", "1"],
], ids=["mosflm", "rotated_twotheta_mask", "xds_twotheta", "custom"])
def test_nexus_round_trip_through_nxmx_with_kernel_geometry(tmp_path, extra):
    if "MASK" in extra:
        mask = np.ones((20, 24), dtype=np.uint16)
        mask[3:6, 4:9] = 0
        from nanobrag_torch.io.smv import smv_header_lines, write_smv
        write_smv(tmp_path / "mask.img", mask, smv_header_lines(size1=24, size2=20))
        extra = [str(tmp_path / "mask.img") if x == "MASK" else x for x in extra]
    sim, image = simulate(*extra)
    exp = experiment.from_image(sim)
    counts = np.rint(image * 11.0)
    path = tmp_path / "image.nxs"
    nexus.write_nexus(path, counts, exp)
    d = dxtbx_nexus(path)
    g = sim.setup.geom
    back = d["lab_to_mcstas"].T @ MCSTAS_TO_IMGCIF        # imgCIF -> nanoBragg lab
    assert np.abs(back @ d["origin"] - g.pix0.numpy() * 1000).max() < MM
    assert np.abs(back @ d["fast"] - g.fdet.numpy()).max() < UNIT
    assert np.abs(back @ d["slow"] - g.sdet.numpy()).max() < UNIT
    assert d["pixel_mm"] == (g.pixel_size_m * 1000,) * 2 and d["size"] == (24, 20)
    # the kernel's pixel centres, from the file's geometry
    s_idx, f_idx = torch.tensor([0, 7, 19]), torch.tensor([0, 13, 23])
    from nanobrag_torch.detector import pixel_positions
    P = pixel_positions(g, s_idx, f_idx, 1, torch.zeros(1, dtype=torch.float64))[:, 0, 0, 0]
    px = d["pixel_mm"][0]
    ours = (d["origin"][None] + (f_idx.numpy()[:, None] + 0.5) * px * d["fast"]
            + (s_idx.numpy()[:, None] + 0.5) * px * d["slow"])
    assert np.abs((back @ ours.T).T - P.numpy() * 1000).max() < MM
    # beam along McStas +z, as dxtbx assumes; the spindle and the scan
    assert np.abs(d["lab_to_mcstas"] @ g.beam.numpy() - [0, 0, 1]).max() < UNIT
    if exp.is_oscillation:
        assert np.abs(back @ d["axis"] - g.vectors.spindle.numpy()).max() < UNIT
        assert d["scan"] == (exp.phi_start_deg[0], exp.phi_width_deg[0], 1)
    else:
        assert d["axis"] is None and d["scan"] is None
    assert d["wavelength"] == 1.0 and d["overload"] == 65535
    thick = float(sim.setup.thick_m)
    assert d["material"] == "Si"
    assert d["thickness_mm"] == pytest.approx(thick * 1000 if thick > 0 else 1e-6, rel=1e-12)
    assert np.array_equal(d["data"], exp.counts(counts)[None])
    rendered = np.ones((20, 24), dtype=bool) if exp.mask is None else exp.mask
    assert np.array_equal(d["mask"] != 0, ~rendered)
    if "-mask" in extra:
        assert (d["mask"] != 0).sum() == 15
    if extra[:1] == ["-phi"]:
        # MOSFLM: imgCIF = (z, y, -x), the frame of the SMV header's DIALS_ORIGIN
        assert np.abs(d["origin"] - g.dials_origin_mm.numpy()).max() < MM


def test_nexus_stack_float_and_still(tmp_path):
    sim, image = simulate()
    exp = experiment.from_image(sim)
    assert not exp.is_oscillation
    nexus.write_nexus(tmp_path / "still.nxs", image, exp, counts=False)
    d = dxtbx_nexus(tmp_path / "still.nxs")
    assert d["axis"] is None and d["scan"] is None                   # a still: no goniometer
    assert d["data"].dtype == np.float32 and np.array_equal(d["data"][0], image)
    import dataclasses
    sweep = dataclasses.replace(exp, phi_start_deg=(0.0, 0.5, 1.0), phi_width_deg=(0.5,) * 3)
    nexus.write_nexus(tmp_path / "sweep.nxs", np.stack([image] * 3), sweep)
    d = dxtbx_nexus(tmp_path / "sweep.nxs")
    assert d["scan"] == (0.0, 0.5, 3) and d["data"].shape == (3, 20, 24)
    with h5py.File(tmp_path / "sweep.nxs") as fh:
        plist = fh["/entry/data/data"].id.get_create_plist()
        assert plist.get_filter(0)[0] == 32008 and plist.get_filter(0)[2][4] == 2   # Bitshuffle+LZ4


# ----------------------------------------------------------------------------- PNG

def test_png_preview_contrast_and_round_trip(tmp_path):
    image = np.zeros((20, 30))
    image[5, 7] = 1000.0                   # a spot
    image[10:, :] = 1.0                    # background
    mask = np.ones_like(image, dtype=bool)
    mask[0, 0] = False
    for scale in ("linear", "log"):
        grey = png.preview(image, scale, mask=mask)
        png.write_png(tmp_path / f"{scale}.png", image, scale=scale, mask=mask)
        assert np.array_equal(np.asarray(Image.open(tmp_path / f"{scale}.png")), grey)
        assert grey[5, 7] == 0 and grey[0, 0] == 255 and grey[0, 5] == 255
        assert 0 < grey[12, 3] < 255                               # background visible
    assert png.preview(image, "log")[12, 3] < png.preview(image, "linear", 100)[12, 3]
    assert np.array_equal(png.preview(np.stack([image, 0 * image])), png.preview(image))


# ----------------------------------------------------------------------------- the command line

def test_cli_writes_cbf_nexus_png_counts_from_the_noise_draws(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = SMALL + ["-fluence", "1e31", "-seed", "7", "-adc", "40", "-osc", "1",
                    "-cbffile", "img_00001.cbf", "-nexusfile", "img.nxs", "-pngfile", "img.png",
                    "-png_scale", "log"]
    from nanobrag_torch.runner import run
    with redirect_stdout(io.StringIO()) as log:
        assert run(config_from_args(args)) == 0
    assert "writing img.nxs as NeXus/NXmx (photon counts with Poisson noise)" in log.getvalue()
    from nanobrag_torch.io import read_smv
    noise = read_smv("noiseimage.img").data.astype(np.int64)
    counts = fabio.open("img_00001.cbf").data
    unclipped = noise < 65535
    assert unclipped.mean() > 0.99 and counts.max() > 100
    assert np.array_equal(counts[unclipped], noise[unclipped] - 40)
    with h5py.File("img.nxs") as fh:
        import hdf5plugin  # noqa: F401
        assert np.array_equal(fh["/entry/data/data"][0], counts)
    assert np.asarray(Image.open("img.png")).shape == (20, 24)


def test_photon_counts_without_noise_are_rounded_photons():
    import dataclasses
    from nanobrag_torch.writers import detector_counts
    image, _ = simulate("-detpixels_f", "3", "-detpixels_s", "1")
    pixels = torch.tensor([[0.4, 0.6, 70000.0]], dtype=torch.float64)
    image = dataclasses.replace(image, pixels=pixels)
    assert detector_counts(image).tolist() == [[0, 1, 65535]]


@pytest.mark.parametrize("module, flag", [
    ("fabio", ["-cbffile", "x_00001.cbf"]), ("h5py", ["-nexusfile", "x.nxs"]),
    ("hdf5plugin", ["-nexusfile", "x.nxs"]), ("PIL", ["-pngfile", "x.png"]),
])
def test_missing_optional_dependency_is_one_clear_line(tmp_path, monkeypatch, capsys, module, flag):
    monkeypatch.chdir(tmp_path)
    for name in list(sys.modules):
        if name == module or name.startswith(module + "."):
            monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ConfigError, match=r"pip install 'nanobrag-torch\[formats\]'"):
        config_from_args(SMALL + flag)
    assert main(SMALL + flag) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "[formats]" in err and "is not installed" in err
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- SMV header (spec)

def test_smv_header_has_adc_offset_in_spec_mode_only():
    from nanobrag_torch.writers import smv_header
    for mode in ("spec", "c-parity"):
        cfg = config_from_args(SMALL + ["-adc", "12.5", "-mode", mode])
        keys = dict(smv_header(nb.simulate(cfg)))
        assert keys.get("ADC_OFFSET") == (12.5 if mode == "spec" else None)
        assert keys["HEADER_BYTES"] == 512
    long = [("HEADER_BYTES", 512), ("PHI", "1" * 600)]
    grown = fit_header_bytes(long)
    assert dict(grown)["HEADER_BYTES"] == 1024 and len(format_header(grown)) == 1024
    assert len(format_header(long)) > 512               # the C's header: no padding, says 512
