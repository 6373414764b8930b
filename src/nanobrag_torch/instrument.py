"""Instrument model: detector panels, beam, crystal orientation, goniometer, scan.

Plain frozen values (floats and tuples), no tensors: what an experiment *is*,
independent of how it is rendered. The readers/writers (io/expt.py,
io/detector_json.py) produce and consume it; experiment.py turns it into a
`SimConfig` and back.

Frame: nanoBragg's lab frame (SPEC section 1), origin at the sample, lengths in
metres. Its default (MOSFLM) convention has the beam along +x, the spindle and
the E-vector along +z. DIALS/dxtbx (imgCIF) has the beam along -z; the two are
related by the fixed proper rotation M (dxtbx's `rotate_mosflm_to_imgCIF`):

    v_dxtbx = M v_nanoBragg,   M = [[0, 0, 1], [0, 1, 0], [-1, 0, 0]]
    (x_d, y_d, z_d) = (z_n, y_n, -x_n)

`to_dials` / `from_dials` apply it (only sign flips and swaps: exact). The
physics does not depend on the frame as long as every vector is in the same one.

A panel is nanoBragg's detector: fast axis fdet, slow axis sdet, normal odet and
pix0 = the outer corner of pixel (0, 0). Pixel (f, s) has its centre at
pix0 + (f + 0.5) px_f fdet + (s + 0.5) px_s sdet (dxtbx's panel origin is the
same point, in mm: no half-pixel shift).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence, Tuple

from .errors import ConfigError

Vec3 = Tuple[float, float, float]

# v_dxtbx = M v_nanoBragg (rows of M)
DIALS_FROM_NANOBRAGG = ((0.0, 0.0, 1.0), (0.0, 1.0, 0.0), (-1.0, 0.0, 0.0))


# --------------------------------------------------------------------------
# frames

def to_dials(v: Sequence[float]) -> Vec3:
    """A nanoBragg lab-frame vector in the dxtbx (imgCIF) lab frame: (z, y, -x)."""
    x, y, z = (float(c) for c in v)
    return (z, y, -x)


def from_dials(v: Sequence[float]) -> Vec3:
    """A dxtbx (imgCIF) lab-frame vector in nanoBragg's lab frame: (-z, y, x)."""
    x, y, z = (float(c) for c in v)
    return (-z, y, x)


def matrix_to_dials(a) -> tuple:
    """M . a for a 3x3 matrix whose columns are lab vectors (A = [a*|b*|c*]); rows of tuples."""
    cols = [to_dials([a[0][j], a[1][j], a[2][j]]) for j in range(3)]
    return tuple(tuple(cols[j][i] for j in range(3)) for i in range(3))


def matrix_from_dials(a) -> tuple:
    """M^T . a: the inverse of matrix_to_dials."""
    cols = [from_dials([a[0][j], a[1][j], a[2][j]]) for j in range(3)]
    return tuple(tuple(cols[j][i] for j in range(3)) for i in range(3))


def exact_inverse(x: float, forward, guess: float) -> float:
    """A y within a few ulps of guess with forward(y) == x exactly, else guess.

    Keeps values that go through a unit conversion and back (metres -> mm in a
    file or a config -> metres in the simulator) bit for bit.
    """
    x, y0 = float(x), float(guess)
    if forward(y0) == x:
        return y0
    for direction in (math.inf, -math.inf):
        y = y0
        for _ in range(4):
            y = math.nextafter(y, direction)
            if forward(y) == x:
                return y
    return y0


def mm_for_m(x_m: float) -> float:
    """The mm value whose /1000 is x_m (the simulator's mm -> m conversion)."""
    return exact_inverse(x_m, lambda y: y / 1000.0, x_m * 1000.0)


def um_for_m(x_m: float) -> float:
    """The um value whose *1e-6 is x_m (the simulator's um -> m conversion)."""
    return exact_inverse(x_m, lambda y: y * 1e-6, x_m * 1e6)


# --------------------------------------------------------------------------
# vector helpers on plain floats, in scitbx's (dxtbx's) operation order (io/expt.py relies on it)

def _vec3(v, what: str) -> Vec3:
    try:
        out = tuple(float(c) for c in v)
    except (TypeError, ValueError):
        raise ConfigError(f"{what}: expected 3 numbers, got {v!r}") from None
    if len(out) != 3 or not all(math.isfinite(c) for c in out):
        raise ConfigError(f"{what}: expected 3 finite numbers, got {v!r}")
    return out


def dot(a, b) -> float:
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def cross(a, b) -> Vec3:
    return (a[1] * b[2] - b[1] * a[2], a[2] * b[0] - b[2] * a[0], a[0] * b[1] - b[0] * a[1])


def norm(a) -> float:
    return math.sqrt(dot(a, a))


def unit(a) -> Vec3:
    n = norm(a)
    return (a[0] / n, a[1] / n, a[2] / n)


def _unit_checked(v, what) -> Vec3:
    """v itself when it is unit length to 1e-9 (values kept exactly), else unit(v)."""
    v = _vec3(v, what)
    n = norm(v)
    if n == 0.0:
        raise ConfigError(f"{what}: the vector must not be (0, 0, 0)")
    return v if abs(n - 1.0) <= 1e-9 else unit(v)


# --------------------------------------------------------------------------
# the model

@dataclass(frozen=True)
class Panel:
    """One flat detector panel, nanoBragg lab frame, metres.

    fast, slow: unit axes (fdet, sdet); origin_m: pix0, the outer corner of
    pixel (0, 0); size_px: (fast, slow) pixel counts; pixel_size_m: (fast,
    slow); thickness_m and mu_per_m (linear attenuation, 1/m; 0 = none) of the
    sensor; normal: odet (None: unit(fast x slow), nanoBragg's convention).
    Axes within 1e-9 of unit length are kept exactly as given, others normalised.
    """
    fast: Vec3
    slow: Vec3
    origin_m: Vec3
    size_px: Tuple[int, int]
    pixel_size_m: Tuple[float, float]
    thickness_m: float = 0.0
    mu_per_m: float = 0.0
    name: str = "panel_00"
    normal: Optional[Vec3] = None

    def __post_init__(self):
        where = f"panel {self.name!r}"
        fast = _unit_checked(self.fast, f"{where} fast axis")
        slow = _unit_checked(self.slow, f"{where} slow axis")
        if norm(cross(fast, slow)) < 1e-9:
            raise ConfigError(f"{where}: fast and slow axes are parallel")
        normal = (unit(cross(fast, slow)) if self.normal is None
                  else _unit_checked(self.normal, f"{where} normal"))
        try:
            size = tuple(int(n) for n in self.size_px)
            px = tuple(float(p) for p in self.pixel_size_m)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: bad size_px {self.size_px!r} or pixel_size_m "
                              f"{self.pixel_size_m!r}") from None
        if len(size) != 2 or min(size) < 1 or any(s != n for s, n in zip(size, self.size_px)):
            raise ConfigError(f"{where}: size_px must be 2 positive integers, got {self.size_px!r}")
        if len(px) != 2 or not all(math.isfinite(p) and p > 0 for p in px):
            raise ConfigError(f"{where}: pixel_size_m must be 2 numbers > 0, got {self.pixel_size_m!r}")
        for label, x in (("thickness_m", self.thickness_m), ("mu_per_m", self.mu_per_m)):
            if not (math.isfinite(float(x)) and float(x) >= 0):
                raise ConfigError(f"{where}: {label} must be a number >= 0, got {x!r}")
        set_ = object.__setattr__
        set_(self, "fast", fast)
        set_(self, "slow", slow)
        set_(self, "normal", normal)
        set_(self, "origin_m", _vec3(self.origin_m, f"{where} origin"))
        set_(self, "size_px", size)
        set_(self, "pixel_size_m", px)
        set_(self, "thickness_m", float(self.thickness_m))
        set_(self, "mu_per_m", float(self.mu_per_m))
        set_(self, "name", str(self.name))

    @property
    def fpixels(self) -> int:
        return self.size_px[0]

    @property
    def spixels(self) -> int:
        return self.size_px[1]

    def point_m(self, f_m: float, s_m: float) -> Vec3:
        """Lab position of panel coordinates (f_m, s_m): metres from the origin corner."""
        o, a, b = self.origin_m, self.fast, self.slow
        return tuple(o[i] + f_m * a[i] + s_m * b[i] for i in range(3))

    def pixel_centre_m(self, f: float, s: float) -> Vec3:
        """Lab position of the centre of pixel (f, s) (fast, slow indices)."""
        return self.point_m((f + 0.5) * self.pixel_size_m[0], (s + 0.5) * self.pixel_size_m[1])

    @property
    def distance_m(self) -> float:
        """Distance of the panel plane from the sample (|origin . normal|)."""
        return abs(dot(self.origin_m, self.normal))

    def beam_centre_m(self, direction: Sequence[float]) -> Optional[Tuple[float, float]]:
        """(fast, slow) panel coordinates (m) where the line sample + t*direction meets the
        panel plane (t > 0), or None when it does not (it may lie outside the panel)."""
        d = _vec3(direction, "beam direction")
        denom = dot(d, self.normal)
        if denom == 0.0:
            return None
        t = dot(self.origin_m, self.normal) / denom
        if t <= 0.0:
            return None
        r = tuple(t * d[i] - self.origin_m[i] for i in range(3))
        # solve r = F fast + S slow (fast, slow need not be exactly orthogonal)
        ff, ss, fs = dot(self.fast, self.fast), dot(self.slow, self.slow), dot(self.fast, self.slow)
        rf, rs = dot(r, self.fast), dot(r, self.slow)
        det = ff * ss - fs * fs
        return ((rf * ss - rs * fs) / det, (rs * ff - rf * fs) / det)


@dataclass(frozen=True)
class Detector:
    """P panels (P >= 1), all in the same lab frame."""
    panels: Tuple[Panel, ...]

    def __post_init__(self):
        panels = tuple(self.panels)
        if not panels or not all(isinstance(p, Panel) for p in panels):
            raise ConfigError("a detector needs at least one Panel")
        object.__setattr__(self, "panels", panels)

    def __len__(self) -> int:
        return len(self.panels)

    def __iter__(self):
        return iter(self.panels)

    def __getitem__(self, i) -> Panel:
        return self.panels[i]


@dataclass(frozen=True)
class Beam:
    """The incident beam: propagation direction (source -> sample, unit), wavelength,
    polarisation as nanoBragg takes it: Kahn factor K (-polar; 0 unpolarised,
    1 fully polarised along polar_axis) and the E-vector axis (-polar_vector).
    DIALS' polarization_fraction f is K = 2f - 1."""
    direction: Vec3 = (1.0, 0.0, 0.0)
    wavelength_A: float = 1.0
    polarization: float = 0.0
    polar_axis: Vec3 = (0.0, 0.0, 1.0)

    def __post_init__(self):
        object.__setattr__(self, "direction", _unit_checked(self.direction, "beam direction"))
        object.__setattr__(self, "polar_axis", _unit_checked(self.polar_axis, "beam polar_axis"))
        lam, k = float(self.wavelength_A), float(self.polarization)
        if not (math.isfinite(lam) and lam > 0):
            raise ConfigError(f"beam wavelength must be > 0 Angstrom, got {self.wavelength_A!r}")
        if not (-1.0 <= k <= 1.0):
            raise ConfigError(f"beam polarization (Kahn factor) must be in [-1, 1], got {k!r}")
        if norm(cross(self.direction, self.polar_axis)) < 1e-12:
            raise ConfigError("beam polar_axis is parallel to the beam")
        object.__setattr__(self, "wavelength_A", lam)
        object.__setattr__(self, "polarization", k)


@dataclass(frozen=True)
class Crystal:
    """Orientation and cell: A = U B (rows x, y, z of the lab frame; columns a*, b*, c*
    in 1/Angstrom, without wavelength), at spindle angle 0. A -mat file holds A * lambda."""
    A: Tuple[Tuple[float, float, float], ...]
    space_group_hall: str = " P 1"     # as cctbx/dxtbx spell it (only P1 is simulated)

    def __post_init__(self):
        rows = tuple(_vec3(r, f"crystal A row {i}") for i, r in enumerate(self.A))
        if len(rows) != 3:
            raise ConfigError(f"crystal A must be 3x3, got {len(rows)} rows")
        object.__setattr__(self, "A", rows)
        if _det3(rows) == 0.0:
            raise ConfigError("crystal A is singular")

    def mosflm_matrix(self, wavelength_A: float):
        """A * lambda as a (3, 3) numpy array: what a -mat file holds (rows x, y, z)."""
        import numpy as np
        return np.array(self.A, dtype=np.float64) * float(wavelength_A)

    @property
    def real_space_A(self):
        """(3, 3) numpy array, rows a, b, c (Angstrom): the inverse of A."""
        import numpy as np
        return np.linalg.inv(np.array(self.A, dtype=np.float64))


def _det3(m) -> float:
    return (m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
            - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
            + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]))


@dataclass(frozen=True)
class Goniometer:
    """A single rotation axis (unit, right-handed: nanoBragg's spindle axis)."""
    axis: Vec3 = (0.0, 0.0, 1.0)

    def __post_init__(self):
        object.__setattr__(self, "axis", _unit_checked(self.axis, "goniometer axis"))


@dataclass(frozen=True)
class Scan:
    """Images first..last; image k covers [start + (k - first) width, ... + width] (deg)."""
    image_range: Tuple[int, int] = (1, 1)
    osc_start_deg: float = 0.0
    osc_width_deg: float = 0.0
    exposure_s: float = 0.0

    def __post_init__(self):
        first, last = (int(k) for k in self.image_range)
        if last < first:
            raise ConfigError(f"scan image_range {self.image_range!r}: last image before first")
        object.__setattr__(self, "image_range", (first, last))
        for label in ("osc_start_deg", "osc_width_deg", "exposure_s"):
            x = float(getattr(self, label))
            if not math.isfinite(x):
                raise ConfigError(f"scan {label} must be finite, got {x!r}")
            object.__setattr__(self, label, x)
        if self.osc_width_deg < 0:
            raise ConfigError(f"scan oscillation width must be >= 0, got {self.osc_width_deg!r}")

    @property
    def num_images(self) -> int:
        return self.image_range[1] - self.image_range[0] + 1

    def image_oscillation(self, image: int) -> Tuple[float, float]:
        """(start, width) in degrees of image number `image` (first..last)."""
        first, last = self.image_range
        if not first <= image <= last:
            raise ConfigError(f"image {image} is outside the scan (images {first}..{last})")
        return self.osc_start_deg + (image - first) * self.osc_width_deg, self.osc_width_deg


@dataclass(frozen=True)
class Experiment:
    """One experiment: what a DIALS experiment holds, in nanoBragg's frame."""
    detector: Detector
    beam: Beam = field(default_factory=Beam)
    crystal: Optional[Crystal] = None
    goniometer: Optional[Goniometer] = None
    scan: Optional[Scan] = None
    identifier: str = ""


# --------------------------------------------------------------------------
# today's single-panel detector as a model

def panel_from_geometry(geom, name: str = "panel_00", thickness_m: float = 0.0,
                        mu_per_m: float = 0.0) -> Panel:
    """The Panel of a `detector.DetectorGeometry` (same fdet, sdet, odet, pix0 values)."""
    def v(t):
        return tuple(float(x) for x in t.detach().reshape(3).tolist())
    px = float(geom.pixel_size_m)
    return Panel(fast=v(geom.fdet), slow=v(geom.sdet), origin_m=v(geom.pix0),
                 size_px=(geom.fpixels, geom.spixels), pixel_size_m=(px, px),
                 thickness_m=thickness_m, mu_per_m=mu_per_m, name=name, normal=v(geom.odet))


def single_panel(cfg, mode: Optional[str] = None) -> Detector:
    """The one-panel model of the detector cfg describes (conventions, pivots, rotations
    and -pix0_vector applied as the simulator does, float64)."""
    import torch
    from .detector import detector_geometry
    geom = detector_geometry(cfg, mode or cfg.mode, torch.float64, torch.device("cpu"))
    det = cfg.detector
    thick = float(det.thickness_um) * 1e-6
    mu = float(det.mu_per_m) if det.mu_per_m else 0.0
    return Detector((panel_from_geometry(geom, thickness_m=thick, mu_per_m=mu),))


def panel_tensors(detector: Detector, dtype=None, device=None) -> dict:
    """The panels as stacked tensors for a P-panel kernel: fdet, sdet, odet, pix0 (P, 3) (m),
    pixel_size (P, 2) (fast, slow; m), size (P, 2) int64 (fast, slow), thickness (P,) m,
    mu (P,) 1/m."""
    import torch
    dtype = dtype or torch.float64
    t = lambda rows: torch.tensor(rows, dtype=dtype, device=device)  # noqa: E731
    ps = detector.panels
    return {
        "fdet": t([p.fast for p in ps]), "sdet": t([p.slow for p in ps]),
        "odet": t([p.normal for p in ps]), "pix0": t([p.origin_m for p in ps]),
        "pixel_size": t([p.pixel_size_m for p in ps]),
        "size": torch.tensor([p.size_px for p in ps], dtype=torch.int64, device=device),
        "thickness": t([p.thickness_m for p in ps]), "mu": t([p.mu_per_m for p in ps]),
    }
