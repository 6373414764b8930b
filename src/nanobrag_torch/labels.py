"""Labels for learning (-labels FILE.h5, -label_threshold PHOTONS): per image, its Bragg
spots and a per-pixel mask, from the kernel's own geometry.

    import nanobrag_torch as nb
    image = nb.Simulator(nb.config_from_args([...])).run()
    lab = nb.spot_labels(image, threshold=10.0)     # dict of numpy arrays, as in the file
    nb.write_labels("labels.h5", image, threshold=10.0)

Geometry: every rendered pixel's centre P (the kernel's detector.pixel_positions, one
subpixel), its scattering vector q = (P/|P| - i)/lambda for the mean incident direction
and wavelength of the kernel's sources, and its fractional Miller index h = A q with the
real axes A the mean of the kernel's cells (its phi steps and mosaic domains: the crystal
at the middle of the image's rotation). Each pixel belongs to its nearest reciprocal
lattice point h0 = round(h); its distance to it in units of the lattice's main lobe is
r = |(h - h0) * (Na, Nb, Nc)| (the lattice factor's first zero along an axis is r = 1).

A spot is a reflection (h, k, l) whose best pixel (least r) has r < 1 (predicted on the
detector), or that owns a pixel above the threshold. Per spot:
  hkl (n, 3) int32; fast, slow (n,) the best pixel's indices (from 0, the image array's
  [slow, fast]): the predicted position in pixels; r (n,) the best pixel's r (0: the
  lattice point on the Ewald sphere at a pixel centre; a partiality proxy);
  intensity (n,) the summed float photons of the spot's pixels above the threshold (not
  F^2: the rendered image's own photons, mosaic, polarisation and solid angle included);
  npix (n,) those pixels.
Per pixel: mask (S, F) uint8, 1 where the float image > threshold (photons); spot
(S, F) int32, the index + 1 of the spot owning a masked pixel, 0 elsewhere.
For a pure Bragg image (no -water, no background) the mask is the Bragg spots' pixels.
One HDF5 file per image (a sweep or batch: numbered as the images, name_00001.h5),
datasets /spots/{hkl,fast,slow,r,intensity,npix}, /mask, /spot, attribute threshold.
"""
from __future__ import annotations

import numpy as np
import torch

from .errors import ConfigError


def _geometry(image):
    """(rendered pixels' slow, fast indices (n,), fractional h (n, 3), lobe r (n,)), numpy."""
    from .detector import pixel_positions
    st = image.setup
    if st.panel_geoms is not None:
        raise ConfigError("-labels: one-panel detectors only (not -detector_json with several panels)")
    plan = st.plan
    s_idx, f_idx = st.pixels_s, st.pixels_f
    zero = torch.zeros(1, dtype=st.geom.pix0.dtype, device=s_idx.device)
    with torch.no_grad():
        P = pixel_positions(st.geom, s_idx, f_idx, 1, zero).reshape(-1, 3)             # (n, 3) m
        d = P / torch.linalg.vector_norm(P, dim=-1, keepdim=True)
        w = plan.source_weight
        w = torch.ones_like(plan.wavelength) if w is None else w
        w = w / w.sum()
        inc = (plan.incident * w[:, None]).sum(0)
        inc = inc / torch.linalg.vector_norm(inc)
        lam = (plan.wavelength * w).sum()
        q = (d - inc) / lam                                                            # 1/m
        cells = plan.cells.to(q.dtype).mean(0)                                         # rows a, b, c (m)
        h = q @ cells.T
        N = plan.n_cells.to(h.dtype)
        r = torch.linalg.vector_norm((h - torch.round(h)) * N, dim=-1)
    return (s_idx.cpu().numpy(), f_idx.cpu().numpy(), h.cpu().double().numpy(), r.cpu().double().numpy())


def spot_labels(image, threshold: float) -> dict:
    """The labels of one image (see the module doc): {name: numpy array}."""
    threshold = float(threshold)
    s, f, h, r = _geometry(image)
    pix = image.pixels.detach().to(torch.float32).cpu().numpy()
    S, F = pix.shape[-2:]
    val = pix[s, f].astype(np.float64)
    above = val > threshold
    h0 = np.rint(h).astype(np.int64)
    keys, inv = np.unique(h0, axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    order = np.lexsort((r, inv))                           # by reflection, then r
    first = np.ones(len(order), bool)
    first[1:] = inv[order][1:] != inv[order][:-1]
    best = order[first]                                    # best pixel of each reflection
    nref = len(keys)
    npix = np.bincount(inv, weights=above, minlength=nref).astype(np.int64)
    inten = np.bincount(inv, weights=np.where(above, val, 0.0), minlength=nref)
    keep = (r[best] < 1.0) | (npix > 0)
    index = np.full(nref, -1, np.int64)
    index[keep] = np.arange(int(keep.sum()))
    mask = np.zeros((S, F), np.uint8)
    mask[s, f] = above
    spot = np.zeros((S, F), np.int32)
    spot[s, f] = np.where(above, index[inv] + 1, 0)
    b = best[keep]
    return {"hkl": keys[keep].astype(np.int32), "fast": f[b].astype(np.float64),
            "slow": s[b].astype(np.float64), "r": r[b], "intensity": inten[keep],
            "npix": npix[keep], "mask": mask, "spot": spot}


def write_labels(path, image, threshold: float) -> None:
    """The labels of one image as HDF5 at path (staged, atomic: io.outputs)."""
    from .io._optional import require
    from .io.outputs import output_path
    h5py = require("h5py")
    lab = spot_labels(image, threshold)
    with output_path(path) as tmp:
        with h5py.File(tmp, "w") as fh:
            fh.attrs["threshold"] = float(threshold)
            fh.attrs["threshold_units"] = "photons per pixel (float image)"
            g = fh.create_group("spots", track_order=False)
            for name in ("hkl", "fast", "slow", "r", "intensity", "npix"):
                g.create_dataset(name, data=lab[name], track_times=False)
            g.attrs["position"] = "fast, slow: pixel indices of the predicted position (from 0)"
            g.attrs["intensity"] = "summed float photons of the spot's pixels above the threshold"
            fh.create_dataset("mask", data=lab["mask"], compression="gzip", track_times=False)
            fh.create_dataset("spot", data=lab["spot"], compression="gzip", track_times=False)


__all__ = ["spot_labels", "write_labels"]
