"""NeXus/NXmx images (HDF5 via h5py, Bitshuffle/LZ4 via hdf5plugin), as DIALS reads them.

Layout (the NXmx application definition; what dxtbx's FormatNXmx and the `nxmx`
package read):

    /entry                     NXentry, definition "NXmx"
      data/data                (N, S, F) images, one chunk per image, Bitshuffle/LZ4
      source, instrument/beam  wavelength, flux, fluence, beam size, polarisation
      instrument/detector      NXdetector: sensor, saturation, pixel mask, timing
        transformations/det_z  translation of close_distance along the detector normal
        module                 NXdetector_module: module_offset (the first pixel's
                               corner in the detector plane), fast/slow_pixel_direction
      sample                   NXsample; transformations/phi: the spindle axis and
                               the scan (start, end, increment per image)

Vectors are nanoBragg's lab vectors (the kernel's fdet, sdet, odet, pix0, beam,
spindle) rotated into the McStas frame by experiment.lab_to_mcstas: beam along
+z, spindle along -x (imgCIF +x). The chain det_z -> module_offset reproduces
pix0 exactly (to rounding), so rotated detectors and two-theta come through as
the kernel had them; the rotation itself is stored in the detector's attribute
`nanobrag_lab_to_mcstas` (v_mcstas = R @ v_lab) for readers that want lab
vectors back. Every panel gets one NXdetector_module, so several panels can
share the detector's transformations later.
"""
from __future__ import annotations

import datetime
import math
import os
from typing import Optional

import numpy as np

from nanobrag_torch.errors import ConfigError
from nanobrag_torch.io._common import atomic_path
from nanobrag_torch.io._optional import require
from nanobrag_torch.io.experiment import Experiment, lab_to_mcstas

DETECTOR = "/entry/instrument/detector"
NOT_SIMULATED = 1 << 8          # NXmx pixel_mask bit 8: user-defined mask
NOMINAL_THICKNESS_M = 1e-9      # written for an ideal (0 m) sensor: DIALS requires > 0


def write_nexus(path, images, exp, *, counts: bool = True,
                start_time: Optional[str] = None) -> None:
    """Write images (S, F) or a stack (N, S, F) and their experiment as an NXmx file.

    exp: an Experiment, or one per panel (a list) for a detector of P panels: images are
    then (P, S, F) or (N, P, S, F), one NXdetector_module per panel, stacked in the data
    array panel after panel (data_origin (p * S, 0)), each with its own vectors.
    counts=True stores int32 detector counts (exp.counts: rounded, clipped to
    0..saturation); counts=False stores the values as float32. Pixels outside
    exp.mask are flagged in pixel_mask (their values are kept). Raises ConfigError
    for a curved detector or a missing h5py/hdf5plugin; the file appears complete
    or not at all.
    """
    arr = np.asarray(images)
    flat = arr[None] if (arr.ndim == 2 or (isinstance(exp, (list, tuple)) and arr.ndim == 3)) else arr
    with NexusStack(path, flat.shape[0], counts=counts, start_time=start_time) as stack:
        for frame in flat:
            stack.add(frame, exp)


class NexusStack:
    """An NXmx file written one image at a time (a rotation sweep that never holds its stack):

        with NexusStack("sweep.nxs", n) as stack:
            for image, exp in ...:        # exp: the sweep's Experiment (n_images = n)
                stack.add(image, exp)     # (S, F), or (P, S, F) with one Experiment per panel

    The file (data (n, S, F), one chunk per image, and the geometry and scan of the first
    add's Experiment) is created at the first add and appears complete, when the block
    ends normally after n adds, or not at all. See write_nexus for counts and panels.
    """

    def __init__(self, path, n: int, *, counts: bool = True, start_time: Optional[str] = None):
        self.path, self.n, self.counts, self.start_time = path, int(n), counts, start_time
        self.done, self._fh, self._data, self._exp = 0, None, None, None

    def __enter__(self):
        import contextlib
        self._stack = contextlib.ExitStack()
        self._tmp = self._stack.enter_context(atomic_path(self.path))
        return self

    def __exit__(self, kind, exc, tb):
        import sys
        try:
            if self._fh is not None:
                self._fh.close()
            if kind is None and self.done != self.n:
                raise ValueError(f"{self.path}: {self.done} image(s) written of the {self.n} declared")
        except BaseException:
            if not self._stack.__exit__(*sys.exc_info()):
                raise
            return False
        return self._stack.__exit__(kind, exc, tb)

    def add(self, image, exp) -> None:
        panels = list(exp) if isinstance(exp, (list, tuple)) else None
        if panels is not None:
            exp = _stacked(panels)
            arr = np.asarray(image)
            image = arr.reshape(-1, arr.shape[-1])                        # (P*S, F)
        if exp.curved:
            raise ConfigError(f"{self.path}: NeXus cannot describe a curved detector (-curved_det)")
        arr = np.asarray(image)
        if arr.shape != (exp.spixels, exp.fpixels):
            raise ValueError(f"NeXus images must be (S, F) or (N, S, F) with (S, F) = "
                             f"({exp.spixels}, {exp.fpixels}), got shape {np.shape(image)}")
        if self.n != exp.n_images:
            raise ValueError(f"{self.n} image(s) but the experiment describes {exp.n_images}")
        if self.done >= self.n:
            raise ValueError(f"{self.path}: more than the {self.n} image(s) declared")
        data = exp.counts(arr) if self.counts else arr.astype(np.float32)
        if self._fh is None:
            self._create(exp, panels, data.dtype)
        self._data[self.done] = data
        self.done += 1

    def _create(self, exp, panels, dtype) -> None:
        h5py = require("h5py")
        hdf5plugin = require("hdf5plugin")
        compression = hdf5plugin.Bitshuffle(cname="lz4")
        R = lab_to_mcstas(exp)
        mc = lambda v: R @ np.asarray(v, dtype=np.float64)  # noqa: E731
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        fh = self._fh = h5py.File(self._tmp, "w")
        _root(fh, self.path, now)
        entry = _group(fh, "entry", "NXentry", default="data")
        entry["definition"] = "NXmx"
        entry["start_time"] = self.start_time or now
        entry["end_time_estimated"] = self.start_time or now
        nxdata = _group(entry, "data", "NXdata", signal="data")
        shape = (self.n, exp.spixels, exp.fpixels)
        self._data = nxdata.create_dataset("data", shape=shape, dtype=dtype,
                                           chunks=(1,) + shape[1:], **compression)
        _group(entry, "source", "NXsource")["name"] = "nanobrag-torch simulation"
        instrument = _group(entry, "instrument", "NXinstrument")
        instrument["name"] = "nanobrag-torch simulation"
        _beam(instrument, exp, mc)
        det = _detector(instrument, exp, R, compression, dtype)
        for i, p in enumerate(panels or [exp]):
            _module(det, "module" if panels is None else f"module_{i:02d}", p.fpixels, p.spixels,
                    mc(p.fdet), mc(p.sdet), mc(p.pix0_m), mc(p.odet), p.pixel_size_m,
                    origin=(i * (exp.spixels // len(panels or [exp])), 0))
        _sample(entry, exp, mc)


def _stacked(panels: list) -> Experiment:
    """The Experiment of the whole detector: panel 0's, with the panels' blocks stacked
    (panel after panel along slow, each the largest panel's size) and their masks."""
    import dataclasses
    S, F = max(p.spixels for p in panels), max(p.fpixels for p in panels)
    mask = np.zeros((len(panels) * S, F), dtype=bool)
    for i, p in enumerate(panels):
        mask[i * S:i * S + p.spixels, :p.fpixels] = True if p.mask is None else p.mask
    return dataclasses.replace(panels[0], spixels=len(panels) * S, fpixels=F,
                               mask=None if mask.all() else mask)


def _root(fh, path, now):
    import h5py
    from nanobrag_torch import __version__
    fh.attrs["NX_class"] = "NXroot"
    fh.attrs["default"] = "entry"
    fh.attrs["file_name"] = os.path.basename(os.fspath(path))
    fh.attrs["file_time"] = now
    fh.attrs["creator"] = f"nanobrag-torch {__version__}"
    fh.attrs["HDF5_Version"] = h5py.version.hdf5_version


def _group(parent, name, nx_class, **attrs):
    g = parent.create_group(name)
    g.attrs["NX_class"] = nx_class
    for k, v in attrs.items():
        g.attrs[k] = v
    return g


def _field(parent, name, value, units=None, **attrs):
    ds = parent.create_dataset(name, data=value)
    if units is not None:
        ds.attrs["units"] = units
    for k, v in attrs.items():
        ds.attrs[k] = v
    return ds


def _axis(parent, name, values, kind, units, vector, depends_on, offset=None):
    """An NXtransformations axis: a translation or rotation along/about `vector`."""
    ds = _field(parent, name, np.asarray(values, dtype=np.float64), units,
                transformation_type=kind, vector=np.asarray(vector, dtype=np.float64),
                depends_on=depends_on)
    if offset is not None:
        ds.attrs["offset"] = np.asarray(offset, dtype=np.float64)
        ds.attrs["offset_units"] = units
    return ds


def _beam(instrument, exp: Experiment, mc):
    beam = _group(instrument, "beam", "NXbeam")
    _field(beam, "incident_wavelength", float(exp.wavelength_A), "angstrom")
    if exp.flux_ph_s > 0:
        _field(beam, "total_flux", float(exp.flux_ph_s), "Hz")
    if exp.exposure_s > 0 and exp.fluence_ph_m2 > 0:
        _field(beam, "flux", exp.fluence_ph_m2 / exp.exposure_s, "Hz/m**2")
    _field(beam, "fluence", float(exp.fluence_ph_m2), "m**-2",
           description="incident photons per unit area per image (nanoBragg -fluence)")
    if exp.beamsize_m > 0:
        _field(beam, "incident_beam_size", np.array([exp.beamsize_m] * 2), "m")
    if exp.polarization_applied:
        p = mc(exp.polar_vector)
        chi = math.atan2(p[1], p[0])
        K = float(exp.polarization_K)
        _field(beam, "incident_polarisation_stokes",
               np.array([1.0, K * math.cos(2 * chi), K * math.sin(2 * chi), 0.0]),
               description="Kahn factor K of nanoBragg (-polar) along its E-vector axis")


def _detector(instrument, exp: Experiment, R, compression, dtype):
    det = _group(instrument, "detector", "NXdetector")
    det.attrs["nanobrag_lab_to_mcstas"] = R
    det["depends_on"] = f"{DETECTOR}/transformations/det_z"
    det["description"] = "nanobrag-torch simulated pixel array detector"
    det["type"] = "pixel"
    det["sensor_material"] = exp.sensor_material
    if exp.sensor_thickness_m > 0:
        _field(det, "sensor_thickness", float(exp.sensor_thickness_m), "m")
    else:
        _field(det, "sensor_thickness", NOMINAL_THICKNESS_M, "m",
               description="simulated without a sensor thickness (no parallax); a nominal "
                           "1 nm, since readers such as DIALS require a thickness > 0")
    _field(det, "x_pixel_size", float(exp.pixel_size_m), "m")
    _field(det, "y_pixel_size", float(exp.pixel_size_m), "m")
    _field(det, "saturation_value", np.int64(exp.saturation))
    _field(det, "underload_value", np.int64(0))
    _field(det, "bit_depth_image", np.int32(8 * np.dtype(dtype).itemsize))
    _field(det, "count_time", float(exp.exposure_s), "s")
    _field(det, "frame_time", float(exp.exposure_s), "s")
    distance = exp.distance_m
    if distance is not None:
        _field(det, "distance", float(distance), "m")
    centre = exp.beam_center_m
    pix0_mc = R @ np.asarray(exp.pix0_m)
    # dxtbx falls back to the beam centre when the origin's x and y are both 0: omit it then
    if centre is not None and not (pix0_mc[0] == 0 and pix0_mc[1] == 0):
        _field(det, "beam_center_x", centre[0] / exp.pixel_size_m, "pixels")
        _field(det, "beam_center_y", centre[1] / exp.pixel_size_m, "pixels")
    mask = np.zeros((exp.spixels, exp.fpixels), dtype=np.int32)
    if exp.mask is not None:
        mask[~exp.mask] = NOT_SIMULATED
    det.create_dataset("pixel_mask", data=mask, chunks=mask.shape, **compression)
    det["pixel_mask_applied"] = False
    transformations = _group(det, "transformations", "NXtransformations")
    odet = R @ np.asarray(exp.odet)
    _axis(transformations, "det_z", [exp.close_distance_m * 1000.0], "translation", "mm",
          odet, ".")
    return det


def _module(det, name, fpixels, spixels, fdet, sdet, pix0, odet, pixel_size_m, origin):
    """One NXdetector_module: pixels (spixels, fpixels) at data_origin `origin` (slow, fast).

    Vectors in McStas; pix0 in metres. module_offset is pix0 minus the detector's
    det_z translation (close_distance along odet): the first pixel's corner within the
    detector plane.
    """
    module = _group(det, name, "NXdetector_module")
    module["data_origin"] = np.asarray(origin, dtype=np.int64)
    module["data_size"] = np.array([spixels, fpixels], dtype=np.int64)
    module["data_stride"] = np.array([1, 1], dtype=np.int64)
    close_mm = float(det["transformations/det_z"][0])
    inplane = pix0 * 1000.0 - close_mm * odet
    length = float(np.linalg.norm(inplane))
    direction = inplane / length if length > 0 else np.array([1.0, 0.0, 0.0])
    base = f"{DETECTOR}/{name}"
    _axis(module, "module_offset", [length], "translation", "mm", direction,
          f"{DETECTOR}/transformations/det_z")
    for axis, vector in (("fast_pixel_direction", fdet), ("slow_pixel_direction", sdet)):
        _axis(module, axis, [pixel_size_m * 1000.0], "translation", "mm", vector,
              f"{base}/module_offset", offset=[0.0, 0.0, 0.0])
    return module


def _sample(entry, exp: Experiment, mc):
    sample = _group(entry, "sample", "NXsample")
    sample["name"] = "simulated crystal"
    if not exp.is_oscillation:
        sample["depends_on"] = "."          # stills: no goniometer, no scan
        return
    sample["depends_on"] = "/entry/sample/transformations/phi"
    transformations = _group(sample, "transformations", "NXtransformations")
    start = np.asarray(exp.phi_start_deg, dtype=np.float64)
    width = np.asarray(exp.phi_width_deg, dtype=np.float64)
    _axis(transformations, "phi", start, "rotation", "deg", mc(exp.spindle_axis), ".")
    _field(transformations, "phi_end", start + width, "deg")
    _field(transformations, "phi_increment_set", width, "deg")
