"""PNG previews (8-bit grey, via Pillow): a picture for a person, not data.

Inverted grey scale (white background, dark spots) with the contrast set from
the image itself, so that both the spots and the background show:

- linear: value / P, clipped at 1, where P is the `percentile` (default 99.9) of
  the simulated pixels' values: the brightest 0.1 % of pixels are black;
- log: log(1 + value / b) / log(1 + max / b), with b the median of the positive
  values (the background level): faint and bright features on one scale.

Pixels outside the mask are drawn white. A stack (N, S, F) is previewed by its
maximum over the images (every spot of a sweep in one picture).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from nanobrag_torch.io._common import atomic_path
from nanobrag_torch.io._optional import require

SCALES = ("linear", "log")


def preview(image, scale: str = "linear", percentile: float = 99.9,
            mask: Optional[np.ndarray] = None) -> np.ndarray:
    """The uint8 (S, F) picture write_png saves (0 black = bright pixel, 255 white)."""
    if scale not in SCALES:
        raise ValueError(f"PNG scale must be one of {', '.join(SCALES)}, got {scale!r}")
    arr = np.asarray(image, dtype=np.float64)
    if arr.ndim == 3:
        arr = arr.max(axis=0)
    if arr.ndim != 2:
        raise ValueError(f"PNG images must be (S, F) or (N, S, F), got shape {np.shape(image)}")
    arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
    arr = np.maximum(arr, 0.0)
    shown = arr if mask is None else arr[mask]
    v = np.zeros_like(arr)
    positive = shown[shown > 0]
    if positive.size:
        if scale == "linear":
            top = float(np.percentile(shown, percentile))
            top = top if top > 0 else float(positive.max())
            v = np.minimum(arr / top, 1.0)
        else:
            b = float(np.median(positive))
            v = np.log1p(arr / b) / np.log1p(float(positive.max()) / b)
    grey = np.rint(255.0 * (1.0 - np.clip(v, 0.0, 1.0))).astype(np.uint8)
    if mask is not None:
        grey[~mask] = 255
    return grey


def write_png(path, image, *, scale: str = "linear", percentile: float = 99.9,
              mask: Optional[np.ndarray] = None) -> None:
    """Write the preview of image (S, F) or stack (N, S, F) as an 8-bit grey PNG.

    mask: (S, F) bool, True where pixels hold data (e.g. Experiment.mask).
    The file appears complete or not at all; ConfigError if Pillow is missing.
    """
    grey = preview(image, scale, percentile, mask)
    Image = require("PIL.Image")
    with atomic_path(path) as tmp:
        Image.fromarray(grey).save(tmp, format="PNG")
