"""Serial batches: N still shots of randomly oriented crystals (-shots N), with a manifest.

    import nanobrag_torch as nb
    cfg = nb.config_from_args([... , "-seed", "7"])
    for k, image in nb.shots(cfg, 200):           # shot k (from 1), one Image at a time
        nb.write_smv(nb.shot_path("shot.img", k), image)

Shot k of batch seed s depends on (s, k) only: its orientation U_k is uniform over the
rotations, the unit quaternion of four standard normal numbers drawn by NumPy's PCG64 from
SeedSequence([s, k]) (the same on any machine, in any order, on any worker); it is applied
after the config's own orientation (the misset, or -mat) as crystal.orientation. Its noise
image draws from noise_seed(s, k) = SeedSequence([s, k, 1]).generate_state(1)[0] mod 2^31.
So `-shots N -shot K` renders shot K alone, bit for bit the file of the batch.

The manifest (CSV, one row per shot, -manifest FILE, default shots.csv) holds: shot, seed
(the batch's), noise_seed, the crystal's A matrix in the convention of -mat (A11 ... A33:
the file's 9 numbers in order, a*, b*, c* as columns, in 1/Angstrom times the wavelength,
at phi = 0), the rotation U11 ... U33, and each written file with its sha256.
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Iterator

import numpy as np

from .config import SimConfig
from .errors import ConfigError
from .sweep import sweep_path

MANIFEST_COLUMNS = (["shot", "seed", "noise_seed"] + [f"A{i}{j}" for i in (1, 2, 3) for j in (1, 2, 3)]
                    + [f"U{i}{j}" for i in (1, 2, 3) for j in (1, 2, 3)] + ["files", "sha256"])


def shot_path(path, k: int) -> str:
    """The file of shot k (from 1): name_00001.ext."""
    return sweep_path(path, k - 1)


def shot_rotation(seed: int, k: int) -> np.ndarray:
    """The rotation U (3, 3) of shot k of batch seed: uniform over SO(3), from (seed, k) only."""
    q = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(k)]))).standard_normal(4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def noise_seed(seed: int, k: int) -> int:
    """The noise seed of shot k of batch seed (positive, < 2^31)."""
    return int(np.random.SeedSequence([int(seed), int(k), 1]).generate_state(1)[0]) % (2 ** 31 - 1) + 1


JITTER = ("N", "mosaic", "fluence", "lambda", "distance")      # the -jitter_* flags, in draw order
JITTER_COLUMNS = {"N": ["Na", "Nb", "Nc"], "mosaic": ["mosaic_deg"], "fluence": ["fluence"],
                  "lambda": ["lambda_A"], "distance": ["distance_mm"]}


def jitter_values(cfg: SimConfig, seed: int, k: int) -> dict:
    """{column: value} of the jittered quantities of shot k (only those of -jitter_* flags).

    Five numbers u uniform in [-1, 1) are drawn from SeedSequence([seed, k, 2]), one per
    quantity of JITTER in that order, whichever are jittered: N (each of Na, Nb, Nc) and
    the mosaic spread, fluence and wavelength are multiplied by 1 + u * FRAC (N then rounded,
    at least 1); the distance gets u * MM added."""
    amounts = dict(cfg.output.jitter)
    if not amounts:
        return {}
    u = dict(zip(JITTER, np.random.Generator(np.random.PCG64(
        np.random.SeedSequence([int(seed), int(k), 2]))).uniform(-1.0, 1.0, len(JITTER))))
    cr, b, d = cfg.crystal, cfg.beam, cfg.detector
    out = {}
    if "N" in amounts:
        f = 1.0 + u["N"] * amounts["N"]
        out.update(zip(JITTER_COLUMNS["N"], (float(max(1, round(float(n) * f))) for n in cr.n_cells)))
    if "mosaic" in amounts:
        out["mosaic_deg"] = float(cr.mosaic_spread_deg or 0.0) * (1.0 + u["mosaic"] * amounts["mosaic"])
    if "fluence" in amounts:
        out["fluence"] = float(b.fluence) * (1.0 + u["fluence"] * amounts["fluence"])
    if "lambda" in amounts:
        out["lambda_A"] = float(b.wavelength_A) * (1.0 + u["lambda"] * amounts["lambda"])
    if "distance" in amounts:
        base = 100.0 if d.distance_mm is None else float(d.distance_mm)
        out["distance_mm"] = base + u["distance"] * amounts["distance"]
    return out


def _fmt(column: str, value) -> str:
    """A jittered value as the manifest writes it (N as an integer, the rest exactly)."""
    return str(int(value)) if column in JITTER_COLUMNS["N"] else repr(float(value))


def manifest_columns(cfg: SimConfig) -> list:
    """The manifest's columns for a batch of cfg: MANIFEST_COLUMNS with the jittered values
    (in JITTER order) before files and sha256."""
    names = dict(cfg.output.jitter)
    extra = [c for j in JITTER if j in names for c in JITTER_COLUMNS[j]]
    return MANIFEST_COLUMNS[:-2] + extra + MANIFEST_COLUMNS[-2:]


def shot_config(cfg: SimConfig, seed: int, k: int) -> SimConfig:
    """The config of shot k (from 1): cfg with orientation U_k, its noise seed and jitter."""
    if cfg.crystal.orientation is not None:
        raise ConfigError("-shots: the shots draw their own orientations (crystal.orientation is set)")
    jit = jitter_values(cfg, seed, k)
    crystal = dataclasses.replace(cfg.crystal, orientation=shot_rotation(seed, k))
    beam, det = cfg.beam, cfg.detector
    if "Na" in jit:
        crystal = dataclasses.replace(crystal, n_cells=(jit["Na"], jit["Nb"], jit["Nc"]))
    if "mosaic_deg" in jit:
        crystal = dataclasses.replace(crystal, mosaic_spread_deg=jit["mosaic_deg"])
    if "fluence" in jit:
        beam = dataclasses.replace(beam, fluence=jit["fluence"])
    if "lambda_A" in jit:
        beam = dataclasses.replace(beam, wavelength_A=jit["lambda_A"])
    if "distance_mm" in jit:
        det = dataclasses.replace(det, distance_mm=jit["distance_mm"])
    return dataclasses.replace(
        cfg, crystal=crystal, beam=beam, detector=det,
        output=dataclasses.replace(cfg.output, seed=noise_seed(seed, k), shots=None, shot=None, jitter=()))


def check(n, what="-shots") -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise ConfigError(f"{what}: must be a positive integer, got {n!r}")
    return n


def run_shots(sim, seed: int, ks, progress=None) -> Iterator:
    """(k, Image) for each shot k of ks, rendered by one Simulator."""
    ks = list(ks)
    for k in ks:
        check(k, "-shot")
    for j, k in enumerate(ks):
        cb = None if progress is None else (lambda done, n, j=j: progress(j * n + done, len(ks) * n))
        yield k, sim._run_one(shot_config(sim.config, seed, k), cb, None)


def shots(config: SimConfig, nshots: int, seed: int | None = None, *, only=None, mode=None,
          dtype=None, device=None, compile=None, progress=None) -> Iterator:
    """(k, Image) for shots k = 1..nshots (or only those in `only`), one at a time.

    seed: the batch seed (None: the config's -seed, which must then be given)."""
    from .simulator import Simulator
    check(nshots)
    seed = config.output.seed if seed is None else seed
    if seed is None:
        raise ConfigError("-shots: a batch needs a seed (-seed S)")
    ks = range(1, nshots + 1) if only is None else list(only)
    for k in ks:
        if not 1 <= k <= nshots:
            raise ConfigError(f"-shot: {k} is not a shot of the batch (1..{nshots})")
    sim = Simulator(config, mode=mode, dtype=dtype, device=device, compile=compile, images=nshots)
    yield from run_shots(sim, seed, ks, progress)


def a_matrix(image) -> np.ndarray:
    """The crystal's A matrix of an image in the -mat convention (3, 3): column j is the
    j-th reciprocal vector (a*, b*, c*) in 1/Angstrom times the wavelength (Angstrom).

    It is the exact inverse of the real axes the kernel used (not the lattice's a*, b*, c*:
    after a -cell the C's reciprocal vectors carry the cell formula's volume, off the real
    axes' own by up to 1e-3), so that -mat gives back the same real axes and the same image."""
    lat = image.setup.lattice
    lam = float(image.config.beam.wavelength_A)
    real = np.stack([np.asarray(v.detach().cpu().double().numpy()) * 1e10
                     for v in (lat.a, lat.b, lat.c)], axis=1)       # columns a, b, c (Angstrom)
    return np.linalg.inv(real).T * lam


def sha256_of(path) -> str:
    from .io.outputs import active_stage
    stage = active_stage()
    real = stage.staged_file(path) if stage is not None else None
    return _sha256_file(real or path)


BLOCK_SHOTS = 8      # shots rendered and put in place together by a restartable batch


def complete_shots(manifest, seed: int, nshots: int, files_of, columns=MANIFEST_COLUMNS,
                   jitter_of=None) -> dict:
    """{k: row} of the shots the manifest of an earlier run of this batch records as
    complete: same seed, k in 1..nshots, the files this run would write (files_of(k)), and
    each file on disk with the recorded sha256. A missing or unreadable manifest: {}."""
    import csv
    import os
    try:
        with open(manifest, newline="") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error):
        return {}
    if not rows or rows[0] != list(columns):
        return {}
    done = {}
    for row in rows[1:]:
        try:
            rec = dict(zip(columns, row, strict=True))
            k, s = int(rec["shot"]), int(rec["seed"])
        except ValueError:
            continue
        files, digests = rec["files"].split(), rec["sha256"].split()
        if s != int(seed) or not 1 <= k <= nshots or files != files_of(k) or len(digests) != len(files):
            continue
        if jitter_of is not None and any(rec[c] != _fmt(c, v) for c, v in jitter_of(k).items()):
            continue
        if all(os.path.isfile(f) and _sha256_file(f) == d for f, d in zip(files, digests)):
            done[k] = row
    return done


def _sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def manifest_row(k: int, seed: int, image, files, jitter=None) -> list:
    A = a_matrix(image)
    U = np.asarray(image.config.crystal.orientation, dtype=np.float64)
    return ([k, seed, image.config.output.seed] + [repr(float(x)) for x in A.reshape(-1)]
            + [repr(float(x)) for x in U.reshape(-1)] + [_fmt(c, v) for c, v in (jitter or {}).items()]
            + [" ".join(files), " ".join(sha256_of(f) for f in files)])


__all__ = ["shots", "shot_path", "shot_rotation", "noise_seed", "shot_config", "a_matrix",
           "jitter_values", "manifest_columns", "MANIFEST_COLUMNS", "JITTER"]
