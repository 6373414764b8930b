"""Headerless float32 images (-floatfile), as nanoBragg.c writes them."""
from __future__ import annotations

import numpy as np

from nanobrag_torch.errors import ConfigError
from nanobrag_torch.io._common import as_numpy, atomic_write, read_bytes

FLOAT_IMAGE_LIMIT = 1 << 34     # 16 GiB: read_float_image refuses larger files


def write_float_image(path, image) -> None:
    """Write image (spixels, fpixels) as little-endian float32, fast index fastest.

    Any float array (or torch tensor) is accepted; values are rounded to
    float32 like the C's (float) store. Written atomically.
    """
    atomic_write(path, float_image_chunks(image))


def float_image_chunks(image) -> list[bytes]:
    """The bytes write_float_image writes, for io.outputs.Stage.write."""
    return [np.ascontiguousarray(as_numpy(image), dtype="<f4").tobytes()]


def read_float_image(path, shape) -> np.ndarray:
    """Read a float image written by write_float_image / the C: float32 array of the given shape.

    shape: (spixels, fpixels). The file size must be exactly 4 * spixels * fpixels.
    """
    shape = tuple(int(n) for n in shape)
    raw = read_bytes(path, FLOAT_IMAGE_LIMIT, "a float image")
    need = 4 * int(np.prod(shape))
    if len(raw) != need:
        raise ConfigError(f"{path}: {len(raw)} bytes, expected {need} for a "
                          f"{' x '.join(map(str, shape))} float32 image")
    return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(shape)


def read_float_values(path, count: int | None = None) -> tuple[np.ndarray, int]:
    """(values, file size in bytes): the first `count` little-endian float32 values of a
    headerless float file (default: all whole values), zero-filled past the file's end as
    the C's calloc + fread leave them (noisify reads any size it is told)."""
    raw = read_bytes(path, FLOAT_IMAGE_LIMIT, "a float image")
    n = len(raw) // 4 if count is None else int(count)
    buf = raw[:4 * n].ljust(4 * n, b"\0")
    return np.frombuffer(buf, dtype="<f4").astype(np.float32), len(raw)
