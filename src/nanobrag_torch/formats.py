"""The command line's CBF, NeXus and PNG outputs of one run (-cbffile, -nexusfile, -pngfile).

CBF and NeXus hold detector counts, as a processing program expects them: the
photons of the noise image (the same Poisson draws, same -seed, as -noisefile)
without its ADC offset, clipped at 65535 like the SMV images; with -nonoise, the
noiseless photons rounded to whole counts. Pixels the run did not render
(outside -roi or the -mask) are flagged (CBF: -1; NeXus: pixel_mask). The PNG
previews the float image.
"""
from __future__ import annotations

import numpy as np
import torch

from .io.experiment import Experiment, from_simulator


def photon_counts(cfg, img32: np.ndarray, roi, seed) -> np.ndarray:
    """The counts written to CBF/NeXus: noise without ADC offset (seed given) or rounded photons."""
    if seed is None:
        return np.clip(np.rint(img32.astype(np.float64)), 0, 65535).astype(np.int32)
    from . import noise
    if cfg.mode == "c-parity":
        counts, _, _ = noise.c_noise_image(img32, seed, roi, 0.0)
    else:
        counts, _, _ = noise.spec_noise_image(torch.from_numpy(img32), seed, roi, 0.0)
    return counts.astype(np.int32)


def write_run_formats(sim, img32: np.ndarray, seed, out) -> Experiment:
    """Write the files cfg.output asks for (cbffile, nexusfile, pngfile); returns the Experiment."""
    cfg, o = sim.config, sim.config.output
    exp = from_simulator(sim)
    what = "photon counts with Poisson noise" if seed is not None else "photon counts (no noise)"
    counts = None
    if o.cbffile is not None or o.nexusfile is not None:
        counts = photon_counts(cfg, img32, sim.last_setup.roi, seed)
    if o.cbffile is not None:
        from .io.cbf import write_cbf
        print(f"writing {o.cbffile} as miniCBF ({what})", file=out)
        write_cbf(o.cbffile, counts, exp)
    if o.nexusfile is not None:
        from .io.nexus import write_nexus
        print(f"writing {o.nexusfile} as NeXus/NXmx ({what})", file=out)
        write_nexus(o.nexusfile, counts, exp)
    if o.pngfile is not None:
        from .io.png import write_png
        print(f"writing {o.pngfile} as PNG preview ({o.png_scale} scale)", file=out)
        write_png(o.pngfile, img32, scale=o.png_scale, mask=exp.mask)
    return exp
