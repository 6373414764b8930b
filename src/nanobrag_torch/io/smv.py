"""SMV (ADSC) images: read like nanoBragg.c's GetFrame/ValueOf, write like its int/noise writers."""
from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np

from nanobrag_torch.errors import ConfigError
from nanobrag_torch.io._common import MiB, as_numpy, atomic_write, check_memory, open_input, show
from nanobrag_torch.io.cnum import c_atof, fmt_g, strtod_prefix

SMV_MAGIC = b"{\nHEADER_BYT"   # GetFrame compares the first 12 bytes only
SMV_HEADER_BYTES = 512
SMV_HEADER_LIMIT = 1 * MiB      # a larger HEADER_BYTES is refused


@dataclass
class SMVFile:
    """An SMV image as the C reads it.

    header: the first header_bytes bytes as text, cut at the first NUL (the C
    treats the header as a C string). width = SIZE1 (fast), height = SIZE2 (slow).
    data: uint16 (height, width), taken from byte offset header_bytes in the
    byte order of the reference machine (little-endian), never swapped.
    """
    header: str
    header_bytes: int
    width: int
    height: int
    data: np.ndarray | None


def header_value(header: str, key: str) -> float | None:
    """The C's ValueOf: atof of the text after the first '=' following the LAST occurrence of key.

    The search is a plain substring search that resumes after each match (so
    "ORGX" matches "XDS_ORGX" and "DISTANCE" matches a later "CLOSE_DISTANCE").
    Returns None where the C returns NaN (key absent) and 0.0 when no '='
    follows the key (as the C).
    """
    text = _value_text(header, key)
    if text is None:
        return None
    return c_atof(text) if text else 0.0


def _value_text(header: str, key: str) -> str | None:
    """The header text after the '=' that follows the last occurrence of key ('' if no '=')."""
    if not key:
        raise ValueError("header_value: empty key")
    pos, found = 0, False
    while True:
        i = header.find(key, pos)
        if i < 0:
            break
        pos, found = i + len(key), True
    if not found:
        return None
    eq = header.find("=", pos)
    return "" if eq < 0 else header[eq + 1:]


# Keys that -img/-mask turn into distances and sizes: zero or negative values are nonsense
HEADER_POSITIVE = ("PIXEL_SIZE", "DISTANCE", "CLOSE_DISTANCE", "WAVELENGTH")
HEADER_NONNEGATIVE = ("OSC_RANGE",)


def checked_header_value(path, header: str, key: str) -> float | None:
    """header_value, refusing what the C would turn into a crash or a meaningless image.

    ConfigError naming the file and key for: no '=' after the key, text that
    does not start with a number ("DISTANCE=abc"), nan or infinity, and a zero
    or negative value of a distance or size (HEADER_POSITIVE; OSC_RANGE may be
    0). None when the key is absent (the C leaves the value as it was).
    """
    text = _value_text(header, key)
    if text is None:
        return None
    shown = show(text.split(";", 1)[0].split("\n", 1)[0], 30)
    value, used = strtod_prefix(text) if text else (0.0, 0)
    if used == 0:
        raise ConfigError(f"{path}: header value {key}={shown} is not a number")
    if not math.isfinite(value):
        raise ConfigError(f"{path}: header value {key}={shown} is not a finite number")
    if key in HEADER_POSITIVE and not value > 0:
        raise ConfigError(f"{path}: header value {key}={fmt_g(value)} must be > 0")
    if key in HEADER_NONNEGATIVE and not value >= 0:
        raise ConfigError(f"{path}: header value {key}={fmt_g(value)} must be >= 0")
    return value


def _c_int(x: float | None) -> int | None:
    """(int) of a double as x86 does it; None for NaN/out of range (the C's INT_MIN)."""
    if x is None or not math.isfinite(x) or abs(x) >= 2 ** 31:
        return None
    return int(x)


def read_smv(path, data: bool = True) -> SMVFile:
    """Read an SMV image like GetFrame (header keys via header_value).

    Raises ConfigError if the file is missing or not a regular file, does not
    start with "{\nHEADER_BYT", is shorter than its header, has no usable
    size, a HEADER_BYTES above SMV_HEADER_LIMIT, or is too short for
    width*height uint16 values after header_bytes. Only the header and the
    pixels are read; an image that cannot fit in the memory available is refused.
    Note: the data offset is HEADER_BYTES even when the writer's header text
    ran past it (nanoBragg's >512-byte header quirk), as in the C.
    data=False: the header only (noisify's -header); no size check of the pixels.
    """
    fh, size = open_input(path)
    with fh:
        head = _read(path, fh, SMV_HEADER_BYTES)
        if len(head) < SMV_HEADER_BYTES:
            raise ConfigError(f"{path}: too short for an SMV (ADSC) image ({len(head)} bytes, "
                              f"need at least {SMV_HEADER_BYTES})")
        if not head.startswith(SMV_MAGIC):
            raise ConfigError(f"{path}: does not look like an SMV (ADSC) image "
                              f"(must begin with '{{' and HEADER_BYTES=)")
        header_bytes = _c_int(header_value(_c_string(head), "HEADER_BYTES"))
        if header_bytes is None or header_bytes <= 0:
            raise ConfigError(f"{path}: SMV header has no valid HEADER_BYTES value")
        if header_bytes > SMV_HEADER_LIMIT:
            raise ConfigError(f"{path}: HEADER_BYTES={header_bytes} is above the "
                              f"{SMV_HEADER_LIMIT // MiB} MiB limit for an SMV header; refused")
        if header_bytes > size:
            raise ConfigError(f"{path}: file ({size} bytes) is shorter than its "
                              f"HEADER_BYTES={header_bytes}")
        raw_header = head[:header_bytes] + _read(path, fh, max(0, header_bytes - len(head)))
        header = _c_string(raw_header)
        width, height = _image_size(path, header)
        need = header_bytes + 2 * width * height
        if data and size < need:
            raise ConfigError(f"{path}: file is {size} bytes, too short for a {width} x {height} "
                              f"unsigned_short image after a {header_bytes}-byte header "
                              f"({need} bytes)")
        pixels = None
        if data:
            check_memory(path, 2 * width * height, f"the {width} x {height} image")
            fh.seek(header_bytes)
            pixels = np.frombuffer(_read(path, fh, 2 * width * height), dtype="<u2")
            if pixels.size != width * height:
                raise ConfigError(f"{path}: file changed while it was read (truncated)")
            pixels = pixels.astype(np.uint16).reshape(height, width)
    return SMVFile(header=header, header_bytes=header_bytes, width=width, height=height,
                   data=pixels)


def _read(path, fh, n: int) -> bytes:
    try:
        return fh.read(n)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read file ({exc.strerror or exc})") from None


def _c_string(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("latin-1")


def _image_size(path, header: str) -> tuple[int, int]:
    width = _c_int(header_value(header, "SIZE1"))
    height = _c_int(header_value(header, "SIZE2"))
    if width == 0:
        # GetFrame's fallback for square detectors
        width = height = _c_int(header_value(header, "DETECTOR_DIMENSIONS"))
    if width is None or height is None or width <= 0 or height <= 0:
        raise ConfigError(f"{path}: SMV header has no valid SIZE1/SIZE2 "
                          f"(got {width} x {height})")
    return width, height


def format_header(header: list[tuple[str, object]]) -> bytes:
    """The header text exactly as the C writes it, "{\\n" ... "}\\f" plus padding.

    Each (key, value) gives "KEY=value;\\n": floats as %g, ints as %d, strings
    verbatim; a tuple/list value gives comma-joined %g values and NO ';' (the
    C's DIALS_ORIGIN line). Spaces pad the text to HEADER_BYTES (512 when the
    header has no such key); when the text is already that long nothing is added
    (the C pads only while ftell < 512).
    """
    text = _header_text(header)
    size = next((int(v) for k, v in header if k == "HEADER_BYTES"), SMV_HEADER_BYTES)
    return text + b" " * max(0, size - len(text))


def _header_text(header) -> bytes:
    lines = ["{\n"]
    for key, value in header:
        if isinstance(value, (tuple, list)) or (hasattr(value, "ndim") and value.ndim == 1):
            lines.append(f"{key}={','.join(_fmt_number(v) for v in value)}\n")
        else:
            lines.append(f"{key}={_fmt_value(value)};\n")
    lines.append("}\f")
    return "".join(lines).encode("latin-1")


def fit_header_bytes(header: list[tuple[str, object]]) -> list[tuple[str, object]]:
    """The header with a HEADER_BYTES that holds its text.

    The C always says 512, also when its text runs past it (readers then take header
    text for pixels). Here a text longer than 512 bytes first has its non-integer
    numbers rounded to 5 significant digits (1e-5 relative, far below what the header
    values are used for), which keeps the 512 every SMV reader expects; only if that
    is still too long does HEADER_BYTES grow to the next multiple of 512.
    """
    if len(_header_text(header)) > SMV_HEADER_BYTES:
        header = [(k, _shorter(v)) for k, v in header]
    length = len(_header_text(header))
    size = SMV_HEADER_BYTES * max(1, -(-length // SMV_HEADER_BYTES))
    return [(k, size if k == "HEADER_BYTES" else v) for k, v in header]


def _shorter(value):
    if isinstance(value, (tuple, list)):
        return type(value)(_shorter(v) for v in value)
    if isinstance(value, float) and math.isfinite(value) and value != int(value):
        return float(f"{value:.5g}")
    return value


def _fmt_value(value) -> str:
    if isinstance(value, str):
        return value
    return _fmt_number(value)


def _fmt_number(value) -> str:
    if hasattr(value, "item") and not isinstance(value, (int, float)):
        value = value.item()          # numpy / torch scalar
    if isinstance(value, Integral):
        return fmt_g(int(value))
    if isinstance(value, Real):
        return fmt_g(float(value))
    raise TypeError(f"SMV header value {value!r} is not a number or string")


def write_smv(path, data: np.ndarray, header: list[tuple[str, object]]) -> None:
    """Write an SMV image like nanoBragg.c's int/noise image writer.

    data: (spixels, fpixels) array of values 0..65535 (uint16 or any integer
    dtype in range), written little-endian, fast index fastest, right after
    the header. header: all (key, value) lines in order, HEADER_BYTES and
    SIZE1/SIZE2 included (checked against data.shape when present).
    The file appears at path only once completely written.
    """
    atomic_write(path, smv_chunks(data, header))


def smv_chunks(data, header: list[tuple[str, object]]) -> list[bytes]:
    """The bytes write_smv writes (header text, then the pixels), for io.outputs.Stage.write."""
    arr = _as_uint16(data)
    _check_size(header, arr.shape)
    return [format_header(header), arr.astype("<u2", copy=False).tobytes(order="C")]


def write_smv_bytes(path, header: bytes, data) -> None:
    """Write header bytes verbatim, then data (2-D uint16 or uint32, little-endian, fast
    index fastest): noisify's copied (-header) and 32-bit (-bits 32) images.  Atomic."""
    arr = as_numpy(data)
    if arr.ndim != 2 or arr.dtype not in (np.uint16, np.uint32):
        raise ValueError(f"SMV data must be 2-D uint16 or uint32, got {arr.dtype} {arr.shape}")
    atomic_write(path, [bytes(header), arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()])


def _as_uint16(data) -> np.ndarray:
    arr = as_numpy(data)
    if arr.ndim != 2:
        raise ValueError(f"SMV data must be 2-D (spixels, fpixels), got shape {arr.shape}")
    if arr.dtype == np.uint16:
        return arr
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"SMV data must be an integer array, got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() > 65535):
        raise ValueError("SMV data values must lie in 0..65535")
    return arr.astype(np.uint16)


def _check_size(header, shape) -> None:
    for key, axis in (("SIZE1", 1), ("SIZE2", 0)):
        for k, v in header:
            if k == key and isinstance(v, Integral) and int(v) != shape[axis]:
                raise ValueError(f"SMV header {key}={v} does not match data shape {shape}")


def smv_header_lines(*, byte_order: str = "little_endian", **values) -> list[tuple[str, object]]:
    """The C's header keys in the C's order, from keyword values (missing ones skipped).

    Keyword names are the header keys in lower case (size1, size2, pixel_size,
    distance, wavelength, beam_center_x, ..., dials_origin=(x, y, z), xds_orgx,
    ..., twotheta); HEADER_BYTES, DIM, BYTE_ORDER, TYPE, DETECTOR_SN and
    BEAMLINE are filled in as the C writes them.
    """
    fixed = {"HEADER_BYTES": 512, "DIM": 2, "BYTE_ORDER": byte_order,
             "TYPE": "unsigned_short", "DETECTOR_SN": "000", "BEAMLINE": "fake"}
    lines = []
    for key in C_HEADER_KEYS:
        if key in fixed:
            lines.append((key, fixed[key]))
        elif key.lower() in values:
            lines.append((key, values.pop(key.lower())))
    if values:
        raise TypeError(f"unknown SMV header keys: {sorted(values)}")
    return lines


# Order of the keys in nanoBragg.c's int/noise image headers.
C_HEADER_KEYS = (
    "HEADER_BYTES", "DIM", "BYTE_ORDER", "TYPE", "SIZE1", "SIZE2", "PIXEL_SIZE", "DISTANCE",
    "WAVELENGTH", "BEAM_CENTER_X", "BEAM_CENTER_Y", "ADXV_CENTER_X", "ADXV_CENTER_Y",
    "MOSFLM_CENTER_X", "MOSFLM_CENTER_Y", "DENZO_X_BEAM", "DENZO_Y_BEAM", "DIALS_ORIGIN",
    "XDS_ORGX", "XDS_ORGY", "CLOSE_DISTANCE", "PHI", "OSC_START", "OSC_RANGE", "TWOTHETA",
    "DETECTOR_SN", "BEAMLINE",
)
