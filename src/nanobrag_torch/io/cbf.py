"""miniCBF images: byte-offset compressed int32 pixels and a Pilatus-style header, via fabio.

The header follows the convention dxtbx reads with FormatCBFMini
(`_array_data.header_convention "GENERIC_MINI"`; a header naming PILATUS would
select FormatCBFMiniPilatus, which expects module gaps): `# Wavelength`,
`# Detector_distance`, `# Beam_xy (fast, slow) pixels`, `# Pixel_size`,
`# Count_cutoff`, `# Start_angle`, `# Angle_increment` ... Numbers are written
in full precision, so the reader gets back the exact values.

miniCBF describes one geometry only, the one dxtbx assumes for it: a flat
detector facing the beam, fast x slow along the beam, the spindle along the
fast axis (in dxtbx's frame: fast +x, slow -y, beam -z, axis +x). Anything
else (a rotated detector, two-theta, a mirrored convention such as ADXV, a
spindle elsewhere for an oscillation) is refused by `geometry_problem`:
NeXus (io.nexus) records any geometry.
"""
from __future__ import annotations

import datetime
import re
from typing import Optional

import numpy as np

from nanobrag_torch.errors import ConfigError
from nanobrag_torch.io._common import atomic_path
from nanobrag_torch.io._optional import require
from nanobrag_torch.io.experiment import Experiment, _cross, _dot

HEADER_CONVENTION = "GENERIC_MINI"
UNIT_TOL = 1e-9          # unit vectors must agree this well with the assumed geometry
MASKED = -1              # the Pilatus value of a pixel without data


def geometry_problem(exp: Experiment) -> Optional[str]:
    """Why a miniCBF header cannot describe exp's geometry, or None when it can."""
    if exp.curved:
        return "the detector is curved (-curved_det)"
    f, s, b = exp.fdet, exp.sdet, exp.beam_dir
    if abs(_dot(f, b)) > UNIT_TOL or abs(_dot(s, b)) > UNIT_TOL:
        return "the detector is not perpendicular to the beam (detector rotations or two-theta)"
    if max(abs(x - y) for x, y in zip(_cross(f, s), b)) > UNIT_TOL:
        return ("its fast x slow axes point against the beam (a mirrored image, as in the "
                "ADXV convention)")
    if exp.is_oscillation and max(abs(x - y) for x, y in zip(exp.spindle_axis, f)) > UNIT_TOL:
        return "the spindle axis is not along the fast axis, as miniCBF readers assume"
    return None


def header_lines(exp: Experiment, index: int = 0, timestamp: Optional[str] = None) -> list[str]:
    """The '# ...' header lines of image `index` (full-precision numbers)."""
    px = exp.pixel_size_m
    bx, by = exp.beam_center_m
    if timestamp is None:
        now = datetime.datetime.now(datetime.timezone.utc)
        timestamp = now.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
    masked = 0 if exp.mask is None else int((~exp.mask).sum())
    phi, width = exp.phi_start_deg[index], exp.phi_width_deg[index]
    lines = [
        "# Detector: nanobrag-torch simulated pixel array detector, S/N 0",
        f"# {timestamp}",
        f"# Pixel_size {_num(px)} m x {_num(px)} m",
    ]
    sensor = {"Si": "Silicon", "CdTe": "CdTe"}.get(exp.sensor_material)
    if exp.sensor_thickness_m > 0 and sensor:
        lines.append(f"# {sensor} sensor, thickness {_num(exp.sensor_thickness_m)} m")
    lines += [
        f"# Exposure_time {_num(exp.exposure_s)} s",
        f"# Exposure_period {_num(exp.exposure_s)} s",
        "# Tau = 0 s",
        f"# Count_cutoff {int(exp.saturation)} counts",
        f"# N_excluded_pixels = {masked}",
        f"# Wavelength {_num(exp.wavelength_A)} A",
        f"# Detector_distance {_num(exp.close_distance_m)} m",
        f"# Beam_xy ({_num(bx / px)}, {_num(by / px)}) pixels",
        f"# Flux {_num(exp.flux_ph_s)}",
        f"# Start_angle {_num(phi)} deg.",
        f"# Angle_increment {_num(width)} deg.",
        "# Detector_2theta 0 deg.",
        f"# Phi {_num(phi)} deg.",
    ]
    return lines


def write_cbf(path, images, exp: Experiment, *, timestamp: Optional[str] = None) -> list[str]:
    """Write images as miniCBF file(s); returns the paths written.

    images: (S, F) -> one file at path; (N, S, F) -> N files, path holding a run of
    '#' replaced by the 1-based image number (e.g. 'sweep_#####.cbf'; DIALS wants
    numbered names). Pixel values become counts (exp.counts: rounded, clipped to
    0..saturation); pixels outside exp.mask are written as -1.
    Raises ConfigError when miniCBF cannot describe the geometry (see
    geometry_problem) or fabio is missing; each file appears complete or not at all.
    """
    problem = geometry_problem(exp)
    if problem is not None:
        raise ConfigError(f"{path}: miniCBF cannot describe this detector: {problem}; "
                          f"write NeXus instead (-nexusfile NAME.nxs), which records any geometry")
    arr = np.asarray(images)
    stack = arr.ndim == 3
    if arr.ndim not in (2, 3):
        raise ValueError(f"CBF images must be (S, F) or (N, S, F), got shape {arr.shape}")
    n = arr.shape[0] if stack else 1
    if n != exp.n_images:
        raise ValueError(f"{n} image(s) but the experiment describes {exp.n_images}")
    if stack and not re.search("#+", str(path)):
        raise ValueError(f"{path}: a stack of images needs a name template with '#' "
                         f"for the image number, e.g. sweep_#####.cbf")
    cbfimage = require("fabio.cbfimage")
    paths = []
    for i in range(n):
        target = _numbered(str(path), i + 1) if stack else str(path)
        counts = exp.counts(arr[i] if stack else arr)
        if exp.mask is not None:
            counts[~exp.mask] = MASKED
        header = {"_array_data.header_convention": HEADER_CONVENTION,
                  "_array_data.header_contents": "\n".join(header_lines(exp, i, timestamp))}
        with atomic_path(target) as tmp:
            cbfimage.CbfImage(data=counts, header=header).write(tmp)
        paths.append(target)
    return paths


def _numbered(template: str, number: int) -> str:
    run = max(re.findall("#+", template), key=len)
    head, _, tail = template.rpartition(run)
    return f"{head}{number:0{len(run)}d}{tail}"


def _num(x: float) -> str:
    """Shortest text that reads back as the same double."""
    return repr(float(x))
