"""HKL text files (h k l F) and the binary Fdump.bin cache, as nanoBragg.c reads/writes them.

Grid layout (both): F[h - h_min, k - k_min, l - l_min], float64, shape
(h_range+1, k_range+1, l_range+1) with x_range = x_max - x_min + 1: the C
allocates one extra zero slab past the maximum index on every axis.
"""
from __future__ import annotations

import math

import numpy as np

from nanobrag_torch.config import HKLData
from nanobrag_torch.errors import ConfigError
from nanobrag_torch.io._common import as_numpy, atomic_write, read_bytes, show
from nanobrag_torch.io.cnum import c_atof, fmt_g, is_c_number, scan_double, scan_int, skip_space

# Refuse grids beyond this many cells (2 GiB of float64): a typo'd index
# would otherwise try to allocate the whole range.
MAX_GRID_CELLS = 1 << 28

_INT_MIN = -(1 << 31)


def read_hkl(path, default_F: float = 0.0, strict: bool = True) -> HKLData:
    """Read an HKL text file into the C's dense grid (see read_hkl_with_messages)."""
    return read_hkl_with_messages(path, default_F, strict)[0]


def read_hkl_with_messages(path, default_F: float = 0.0,
                           strict: bool = True) -> tuple[HKLData, list[str]]:
    """Read an HKL file; also return the C's non-integer-index warnings.

    strict=True (spec mode): one entry per non-blank line, 4 to 6 numbers
    (h k l F [phase [sigma]]; extra columns ignored, a port-only extension),
    the same column count on every line; anything else is a ConfigError
    naming the file and line. Non-integer indices warn (as the C) and are
    truncated toward zero.
    strict=False (c-parity): exactly the C's two fscanf passes over a number
    stream ("%lg"x4 to size the grid, then "%d%d%d%lg" to fill it), each
    stopping silently at the first thing that does not convert, so 5/6-column
    files are misread and a non-integer index ends the fill, as in the C.

    Grid: zeros, or default_F on the real range (not the padding slab) when
    default_F != 0; then each stored entry's F (the last one wins).
    Messages: "WARNING: non-integer value for h (%g) at line %d" with the C's
    0-based entry counter as "line".
    """
    default_F = float(default_F)        # may arrive as a 0-d tensor
    raw = read_bytes(path)
    fast = _fast_parse(raw, strict)
    if fast is not None:
        entries, stored = fast
    elif strict:
        entries = _parse_strict(path, raw)
        stored = entries.copy()
        stored[:, :3] = np.trunc(stored[:, :3])      # the C's "%d" keeps the integer part
    else:
        entries = _scan_c_pass1(raw)
        stored = _scan_c_pass2(raw)
    messages = _warnings(entries)
    h_min, h_max, k_min, k_max, l_min, l_max = _index_bounds(entries)
    ranges = (h_max - h_min + 1, k_max - k_min + 1, l_max - l_min + 1)
    if min(ranges) < 0 or (strict and len(entries) == 0):
        raise ConfigError(f"{path}: not enough HKL indices"
                          + ("" if len(entries) else " (no 'h k l F' entries found)"))
    shape = _grid_shape(path, ranges, (h_min, h_max, k_min, k_max, l_min, l_max))
    F = np.zeros(shape, dtype=np.float64)
    if default_F != 0.0:
        F[:ranges[0], :ranges[1], :ranges[2]] = default_F
    _store(path, F, stored, (h_min, k_min, l_min))
    hkl = HKLData(F=F, h_min=h_min, h_max=h_max, k_min=k_min, k_max=k_max,
                  l_min=l_min, l_max=l_max, hkls=len(entries), source=str(path))
    return hkl, messages


# What plain decimal numbers and whitespace are made of (the usual content of an HKL file)
_NUMBER_BYTES = b"0123456789+-.eE"
_SPACE_BYTES = b" \t\n\r\v\f"


def _fast_parse(raw: bytes, strict: bool):
    """(entries, stored) for a well-formed file of plain numbers, else None (use the slow path).

    Same results as the general parsers, which also produce the error messages.
    """
    if raw.translate(None, _NUMBER_BYTES + _SPACE_BYTES):
        return None                      # other characters: the general parsers decide
    tokens = raw.split()
    try:
        # made of those characters, a token float() accepts is a plain decimal number
        values = np.fromiter(map(float, tokens), dtype=np.float64, count=len(tokens))
    except ValueError:
        return None
    if strict:
        counts = set(map(len, map(bytes.split, raw.split(b"\n")))) - {0}
        if len(counts) != 1 or not 4 <= min(counts) <= 6:
            return None
        entries = values.reshape(-1, counts.pop())[:, :4]
        stored = entries.copy()
        stored[:, :3] = np.trunc(stored[:, :3])
        return entries, stored
    # C: "%lg"x4 takes the numbers 4 at a time; when every h, k, l is a plain
    # integer "%d%d%d%lg" reads the same entries. Otherwise the exact scanner
    # decides ("1.5" as h reads 1 then fails at ".5"; "3.0" as l reads 3 and
    # then ".0" as F, misaligning the rest).
    n = len(tokens) // 4
    indices = b" ".join(t for j in range(3) for t in tokens[j:4 * n:4])
    entries = values[:4 * n].reshape(n, 4)
    if indices.translate(None, b"0123456789+- ") or (np.abs(entries[:, :3]) >= 1e9).any():
        return None
    return entries, entries.copy()


def _parse_strict(path, raw: bytes) -> np.ndarray:
    """(n, 4) float64 h k l F, one entry per non-blank line; ConfigError on anything else."""
    if b"\0" in raw:
        raise ConfigError(f"{path}: binary data in an HKL text file (NUL byte)")
    rows, ncols, first_line = [], None, 0
    for lineno, line in enumerate(raw.split(b"\n"), start=1):
        tokens = line.split()           # bytes.split(): C isspace characters
        if not tokens:
            continue
        text = [t.decode("latin-1") for t in tokens]
        bad = next((t for t in text if not is_c_number(t)), None)
        if bad is not None or not 4 <= len(text) <= 6:
            what = f"'{show(bad)}' is not a number" if bad is not None else f"{len(text)} numbers"
            raise ConfigError(f"{path} line {lineno}: expected 'h k l F' (4 to 6 numbers), "
                              f"got '{show(line)}' ({what})")
        if ncols is None:
            ncols, first_line = len(text), lineno
        elif len(text) != ncols:
            raise ConfigError(f"{path} line {lineno}: {len(text)} columns, but line "
                              f"{first_line} has {ncols}; all lines must have the same columns")
        values = [c_atof(t) for t in text[:4]]
        if not all(math.isfinite(v) for v in values[:3]):
            raise ConfigError(f"{path} line {lineno}: h k l must be finite numbers, "
                              f"got '{show(line)}'")
        rows.append(values)
    return np.array(rows, dtype=np.float64).reshape(-1, 4)


def _scan_c_pass1(raw: bytes) -> np.ndarray:
    """The C's counting pass: while(4 == fscanf("%lg%lg%lg%lg")) over the number stream."""
    rows, pos = [], 0
    while True:
        row = []
        for _ in range(4):
            got = scan_double(raw, pos)
            if got is None:
                break
            row.append(got[0])
            pos = got[1]
        if len(row) < 4:
            return np.array(rows, dtype=np.float64).reshape(-1, 4)
        rows.append(row)


def _scan_c_pass2(raw: bytes) -> np.ndarray:
    """The C's fill pass: while(4 == fscanf("%d%d%d%lg")) from the start of the file."""
    rows, pos = [], 0
    while True:
        row = []
        for i in range(4):
            got = scan_int(raw, pos) if i < 3 else scan_double(raw, pos)
            if got is None:
                break
            row.append(float(got[0]))
            pos = got[1]
        if len(row) < 4:
            return np.array(rows, dtype=np.float64).reshape(-1, 4)
        rows.append(row)


def _warnings(entries: np.ndarray) -> list[str]:
    """The C's pass-1 warnings, in its order (entry by entry, then h, k, l)."""
    idx = entries[:, :3]
    with np.errstate(invalid="ignore"):
        flagged = idx != np.ceil(idx - 0.4)        # NaN != NaN: warns, as in C
    messages = []
    for n, col in zip(*np.nonzero(flagged)):
        messages.append(f"WARNING: non-integer value for {'hkl'[col]} "
                        f"({fmt_g(float(idx[n, col]))}) at line {n}")
    return messages


def _index_bounds(entries: np.ndarray) -> tuple[int, ...]:
    """h_min h_max k_min k_max l_min l_max as the C gets them.

    The C compares doubles against int variables started at +-1e9 and stores
    the double into the int: a truncation toward zero of the running min/max
    (x86: INT_MIN for out-of-range values).
    """
    out = []
    for col in range(3):
        v = entries[:, col]
        v = v[~np.isnan(v)]
        lo = min(1e9, float(v.min())) if v.size else 1e9
        hi = max(-1e9, float(v.max())) if v.size else -1e9
        out += [_c_int(lo), _c_int(hi)]
    return tuple(out)


def _c_int(x: float) -> int:
    """(int) of a double on x86: truncation toward zero, INT_MIN when out of range."""
    if not math.isfinite(x) or not -2.0 ** 31 < x < 2.0 ** 31:
        return _INT_MIN
    return int(x)


def _grid_shape(path, ranges, bounds) -> tuple[int, int, int]:
    shape = tuple(r + 1 for r in ranges)
    if math.prod(shape) > MAX_GRID_CELLS:
        h0, h1, k0, k1, l0, l1 = bounds
        raise ConfigError(f"{path}: HKL index ranges too large for a dense grid "
                          f"(h {h0}..{h1}, k {k0}..{k1}, l {l0}..{l1})")
    return shape


def _store(path, F: np.ndarray, stored: np.ndarray, mins) -> None:
    """F[h-h_min, k-k_min, l-l_min] = F_entry for every stored entry, last one winning."""
    if len(stored) == 0:
        return
    ijk = stored[:, :3].astype(np.int64) - np.asarray(mins, dtype=np.int64)
    inside = np.all((ijk >= 0) & (ijk < np.asarray(F.shape)), axis=1)
    if not inside.all():
        # only reachable in C mode with indices that wrap; the C would write out of bounds
        n = int(np.argmin(inside))
        raise ConfigError(f"{path}: entry {n} (h k l = {' '.join(str(int(x)) for x in stored[n, :3])})"
                          f" falls outside the index ranges of the file")
    flat = np.ravel_multi_index(ijk.T, F.shape)
    _, first_from_end = np.unique(flat[::-1], return_index=True)
    keep = len(flat) - 1 - first_from_end
    F.flat[flat[keep]] = stored[keep, 3]


def write_fdump(path, hkl: HKLData) -> None:
    """Write the C's Fdump.bin: "%d %d %d %d %d %d\\n\\f" (h_min h_max k_min k_max l_min l_max),
    then every grid value, padding included, as little-endian float64 in C order
    (h slowest, l fastest). Written atomically.
    """
    F = as_numpy(hkl.F)
    bounds = [int(x) for x in (hkl.h_min, hkl.h_max, hkl.k_min, hkl.k_max, hkl.l_min, hkl.l_max)]
    shape = (bounds[1] - bounds[0] + 2, bounds[3] - bounds[2] + 2, bounds[5] - bounds[4] + 2)
    if F.shape != shape:
        raise ValueError(f"HKL grid shape {F.shape} does not match its index ranges {shape}")
    header = ("%d %d %d %d %d %d\n\f" % tuple(bounds)).encode("ascii")
    atomic_write(path, [header, np.ascontiguousarray(F, dtype="<f8").tobytes()])


def read_fdump(path, c_quirk: bool = False) -> HKLData:
    """Read an Fdump.bin written by write_fdump or by nanoBragg.c.

    c_quirk=False: the header must be followed by exactly "\\n\\f".
    c_quirk=True: like the C's fscanf("%d%d%d%d%d%d\\n\\f"), whose "\\n" and
    "\\f" directives skip ANY run of whitespace: a first double starting with
    a byte 0x09-0x0D or 0x20 loses it and the whole grid is read shifted
    (the missing final byte(s) read as 0, as the C's partial fread into calloc'd memory).
    hkls = h_range * k_range * l_range (the C's count; only != 0 matters).
    """
    raw = read_bytes(path)
    bounds, pos = [], 0
    for _ in range(6):
        got = scan_int(raw, pos)
        if got is None:
            raise ConfigError(f"{path}: not an Fdump file (header must be six integers "
                              f"h_min h_max k_min k_max l_min l_max)")
        bounds.append(got[0])
        pos = got[1]
    swallowed = 0
    if c_quirk:
        start, pos = pos, skip_space(raw, pos)
        swallowed = max(0, pos - start - 2)     # bytes of the first double eaten
    elif raw[pos:pos + 2] == b"\n\f":
        pos += 2
    else:
        raise ConfigError(f"{path}: not an Fdump file (header not followed by newline, form feed)")
    h_min, h_max, k_min, k_max, l_min, l_max = bounds
    ranges = (h_max - h_min + 1, k_max - k_min + 1, l_max - l_min + 1)
    if min(ranges) < 1:
        raise ConfigError(f"{path}: invalid index ranges in Fdump header "
                          f"(h {h_min}..{h_max}, k {k_min}..{k_max}, l {l_min}..{l_max})")
    shape = _grid_shape(path, ranges, bounds)
    count = math.prod(shape)
    data = raw[pos:]
    if 0 < 8 * count - len(data) <= swallowed:
        # the C's fread then fills the last value partly, over calloc'd zeros
        data += bytes(8 * count - len(data))
    if len(data) < 8 * count:
        raise ConfigError(f"{path}: Fdump file too short: {len(data)} data bytes, "
                          f"need {8 * count} for a {shape[0]} x {shape[1]} x {shape[2]} grid")
    F = np.frombuffer(data, dtype="<f8", count=count).astype(np.float64).reshape(shape)
    return HKLData(F=F, h_min=h_min, h_max=h_max, k_min=k_min, k_max=k_max, l_min=l_min,
                   l_max=l_max, hkls=ranges[0] * ranges[1] * ranges[2], source=str(path))
