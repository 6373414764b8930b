"""HKL text files (h k l F) and the binary Fdump.bin cache, as nanoBragg.c reads/writes them.

Grid layout (both): F[h - h_min, k - k_min, l - l_min], float64, shape
(h_range+1, k_range+1, l_range+1) with x_range = x_max - x_min + 1: the C
allocates one extra zero slab past the maximum index on every axis.

Memory: an HKL file is read in blocks of whole lines (BLOCK_BYTES), in the
C's two passes: the first checks every line and finds the index ranges, the
second fills the grid (a file whose entries take less than KEEP_BYTES keeps
them from the first pass instead of reading the file again). Fdump.bin is
read into the grid and written from it slab by slab. So a run holds one
grid plus a block; a grid larger than the memory available now is refused
with its size before it is allocated.
"""
from __future__ import annotations

import math
import re

import numpy as np

from nanobrag_torch.config import HKLData
from nanobrag_torch.errors import ConfigError
from nanobrag_torch.io import _common
from nanobrag_torch.io._common import MiB, as_numpy, atomic_write, open_input, show, where
from nanobrag_torch.io.cnum import c_atof, fmt_g, is_c_number, scan_double, scan_int, skip_space

# Without a way to ask for the memory available, refuse grids beyond this many
# cells (2 GiB of float64): a typo'd index would otherwise try to allocate the whole range.
MAX_GRID_CELLS = 1 << 28
BLOCK_BYTES = 16 * MiB          # text read per block (whole lines)
KEEP_BYTES = 256 * MiB          # entries kept between the passes up to this size

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
    naming the file and line ("path:N: reason"). Non-integer indices warn (as
    the C) and are truncated toward zero.
    strict=False (c-parity): exactly the C's two fscanf passes over a number
    stream ("%lg"x4 to size the grid, then "%d%d%d%lg" to fill it), each
    stopping at the first thing that does not convert, so 5/6-column files
    are misread and a non-integer index ends the fill, as in the C (a note
    says where reading stopped).
    Both modes refuse non-finite numbers (nan, inf, 1e999) with file:line.

    Grid: zeros, or default_F on the real range (not the padding slab) when
    default_F != 0; then each stored entry's F (the last one wins).
    Messages: "WARNING: non-integer value for h (%g) at line %d" with the C's
    0-based entry counter as "line".
    """
    default_F = float(default_F)        # may arrive as a 0-d tensor
    fh, _ = open_input(path)
    with fh:
        scan = _StrictScan(path) if strict else _CScan(path)
        kept, kept_bytes = [], 0
        for lineno, block in _blocks(path, fh, strict):
            stored = scan.pass1(lineno, block)
            if kept is not None:
                kept.append(stored)
                kept_bytes += stored.nbytes
                if kept_bytes > KEEP_BYTES:
                    kept = None
            if scan.done():
                break
        h_min, h_max, k_min, k_max, l_min, l_max = scan.bounds()
        ranges = (h_max - h_min + 1, k_max - k_min + 1, l_max - l_min + 1)
        if min(ranges) < 0 or (strict and scan.n == 0):
            raise ConfigError(f"{path}: not enough HKL indices"
                              + ("" if scan.n else " (no 'h k l F' entries found)"))
        shape = _grid_shape(path, ranges, (h_min, h_max, k_min, k_max, l_min, l_max))
        F = np.zeros(shape, dtype=np.float64)
        if default_F != 0.0:
            F[:ranges[0], :ranges[1], :ranges[2]] = default_F
        mins = (h_min, k_min, l_min)
        if kept is not None:
            for stored in kept:
                _store(path, F, stored, mins)
        else:
            fh.seek(0)
            scan.restart()
            for lineno, block in _blocks(path, fh, strict):
                _store(path, F, scan.pass2(lineno, block), mins)
                if scan.done():
                    break
    hkl = HKLData(F=F, h_min=h_min, h_max=h_max, k_min=k_min, k_max=k_max,
                  l_min=l_min, l_max=l_max, hkls=scan.n, source=str(path))
    return hkl, scan.messages + scan.notes()


# ----------------------------------------------------------------------------- blocks

_WS = b" \t\n\r\v\f"


def _blocks(path, fh, strict: bool, size: int | None = None):
    """(first line number, bytes) for successive pieces of the file, each ending after a newline.

    A piece with no newline in `size` bytes is an error in strict mode (no
    HKL line is that long); otherwise it is cut after its last whitespace
    byte (the C's number stream ignores lines).
    """
    size = size or BLOCK_BYTES
    carry, lineno = b"", 1
    while True:
        try:
            chunk = fh.read(size)
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read file ({exc.strerror or exc})") from None
        if not chunk:
            if carry:
                yield lineno, carry
            return
        buf = carry + chunk
        cut = buf.rfind(b"\n") + 1
        if cut == 0:
            if len(buf) < size:
                carry = buf
                continue
            if strict:
                raise ConfigError(f"{where(path, lineno)}: line longer than {_common.size_text(size)}"
                                  f" (not an HKL text file)")
            cut = max(buf.rfind(bytes([b])) for b in _WS) + 1
            if cut == 0:
                raise ConfigError(f"{where(path, lineno)}: {_common.size_text(size)} without a "
                                  f"space or line break (not an HKL text file)")
        piece, carry = buf[:cut], buf[cut:]
        yield lineno, piece
        lineno += piece.count(b"\n")


# What plain decimal numbers and whitespace are made of (the usual content of an HKL file)
_NUMBER_BYTES = b"0123456789+-.eE"
_PLAIN = _NUMBER_BYTES + _WS
_TOKEN = re.compile(rb"\S+")


def _plain_values(block: bytes):
    """(tokens, float64 values) when the block is only plain decimal numbers, else None.

    Made of those characters, a token float() accepts is a number glibc reads
    to the same value, with nothing left over.
    """
    if block.translate(None, _PLAIN):
        return None
    tokens = block.split()
    try:
        values = np.fromiter(map(float, tokens), dtype=np.float64, count=len(tokens))
    except ValueError:
        return None
    return tokens, values


def _nonfinite_at(path, lineno: int, block: bytes) -> ConfigError:
    """The error for the first token of block that reads as nan or infinity."""
    for m in _TOKEN.finditer(block):
        text = m.group().decode("latin-1")
        if not math.isfinite(c_atof(text)):
            line = lineno + block.count(b"\n", 0, m.start())
            return ConfigError(f"{where(path, line)}: '{show(text)}' is not a finite number")
    return ConfigError(f"{where(path, lineno)}: a number that is not finite")


class _Bounds:
    """Running count, index ranges and warnings of the first pass (the C's pass 1)."""

    def __init__(self, path):
        self.path = path
        self.n = 0
        self.lo = [1e9] * 3         # the C starts its int min/max at +-1e9
        self.hi = [-1e9] * 3
        self.messages: list[str] = []

    def add(self, entries: np.ndarray) -> None:
        if len(entries) == 0:
            return
        for c in range(3):
            self.lo[c] = min(self.lo[c], float(entries[:, c].min()))
            self.hi[c] = max(self.hi[c], float(entries[:, c].max()))
        self.messages += _warnings(entries, self.n)
        self.n += len(entries)

    def bounds(self) -> tuple[int, ...]:
        """h_min h_max k_min k_max l_min l_max as the C gets them: it compares doubles with
        int variables and stores the double into the int, a truncation toward zero."""
        return tuple(_c_int(x) for c in range(3) for x in (self.lo[c], self.hi[c]))


# ----------------------------------------------------------------------------- spec mode

class _StrictScan(_Bounds):
    """Spec mode: one entry per line, checked line by line."""

    def __init__(self, path):
        super().__init__(path)
        self.ncols, self.first_line = None, 0

    def parse(self, lineno: int, block: bytes) -> np.ndarray:
        """(n, 4) h k l F of the block's lines; ConfigError at the first bad line."""
        plain = _plain_values(block)
        if plain is not None:
            counts = set(map(len, map(bytes.split, block.split(b"\n")))) - {0}
            if len(counts) == 1 and 4 <= min(counts) <= 6 and self.ncols in (None, min(counts)):
                ncols = counts.pop()
                values = plain[1].reshape(-1, ncols)
                if np.isfinite(values[:, :4]).all():
                    if self.ncols is None:
                        self.ncols = ncols
                        self.first_line = lineno + block[:len(block) - len(block.lstrip())].count(b"\n")
                    return values[:, :4]
        return self._parse_lines(lineno, block)

    def _parse_lines(self, lineno: int, block: bytes) -> np.ndarray:
        path = self.path
        rows = []
        for n, line in enumerate(block.split(b"\n"), start=lineno):
            at = where(path, n)
            if b"\0" in line:
                raise ConfigError(f"{at}: binary data in an HKL text file (NUL byte)")
            tokens = line.split()           # bytes.split(): C isspace characters
            if not tokens:
                continue
            text = [t.decode("latin-1") for t in tokens]
            bad = next((t for t in text if not is_c_number(t)), None)
            if bad is not None or not 4 <= len(text) <= 6:
                what = (f"'{show(bad)}' is not a number" if bad is not None
                        else f"{len(text)} numbers")
                raise ConfigError(f"{at}: expected 'h k l F' (4 to 6 numbers), "
                                  f"got '{show(line)}' ({what})")
            if self.ncols is None:
                self.ncols, self.first_line = len(text), n
            elif len(text) != self.ncols:
                raise ConfigError(f"{at}: {len(text)} columns, but line {self.first_line} has "
                                  f"{self.ncols}; all lines must have the same columns")
            values = [c_atof(t) for t in text[:4]]
            if not all(math.isfinite(v) for v in values[:3]):
                raise ConfigError(f"{at}: h k l must be finite numbers, got '{show(line)}'")
            if not math.isfinite(values[3]):
                raise ConfigError(f"{at}: F must be a finite number, got '{show(text[3])}'")
            rows.append(values)
        return np.array(rows, dtype=np.float64).reshape(-1, 4)

    def pass1(self, lineno, block):
        entries = self.parse(lineno, block)
        self.add(entries)
        return _truncated(entries)

    def pass2(self, lineno, block):
        return _truncated(self.parse(lineno, block))

    def restart(self):
        pass

    def done(self) -> bool:
        return False

    def notes(self) -> list[str]:
        return []


def _truncated(entries: np.ndarray) -> np.ndarray:
    stored = entries.copy()
    stored[:, :3] = np.trunc(stored[:, :3])      # the C's "%d" keeps the integer part
    return stored


# ----------------------------------------------------------------------------- c-parity

class _CStream:
    """One of the C's fscanf loops (4 conversions per entry) over the number stream,
    fed block by block; an entry may span blocks (and lines)."""

    def __init__(self, path, ints: bool):
        self.path, self.ints = path, ints
        self.convs = (scan_int,) * 3 + (scan_double,) if ints else (scan_double,) * 4
        self.partial: list[float] = []
        self.stopped = None                 # (line, text) where the loop stopped

    def feed(self, lineno: int, block: bytes, plain) -> np.ndarray:
        if self.stopped:
            return np.zeros((0, 4))
        if plain is not None and self._plain_ok(*plain):
            values = np.concatenate([np.asarray(self.partial, dtype=np.float64), plain[1]])
            n = len(values) // 4
            rows = values[:4 * n].reshape(n, 4)
            self.partial = list(values[4 * n:])
        else:
            rows = self._scan(lineno, block)
        if not np.isfinite(rows).all():
            raise _nonfinite_at(self.path, lineno, block)
        return rows

    def _plain_ok(self, tokens, values) -> bool:
        """Whether "%d" reads every index token of the block as float() does."""
        if not self.ints:
            return True
        k = len(self.partial)
        idx = [j for j in range(len(tokens)) if (k + j) % 4 < 3]
        text = b" ".join(tokens[j] for j in idx)
        return not text.translate(None, b"0123456789+- ") and not (np.abs(values[idx]) >= 1e9).any()

    def _scan(self, lineno: int, block: bytes) -> np.ndarray:
        rows, row, pos = [], list(self.partial), 0
        while True:
            for i in range(len(row), 4):
                got = self.convs[i](block, pos)
                if got is None:
                    end = skip_space(block, pos)
                    if end >= len(block):
                        self.partial = row          # the entry goes on in the next block
                    else:
                        token = block[end:end + 40].split()[0] if block[end:end + 40].split() else b""
                        self.stopped = (lineno + block.count(b"\n", 0, end), token)
                        self.partial = []
                    return np.array(rows, dtype=np.float64).reshape(-1, 4)
                row.append(float(got[0]))
                pos = got[1]
            rows.append(row)
            row = []


class _CScan(_Bounds):
    """c-parity: the C's counting pass ("%lg"x4) and fill pass ("%d%d%d%lg"), run together."""

    def __init__(self, path):
        super().__init__(path)
        self.count = _CStream(path, ints=False)
        self.fill = _CStream(path, ints=True)

    def pass1(self, lineno, block):
        plain = _plain_values(block)
        self.add(self.count.feed(lineno, block, plain))
        return self.fill.feed(lineno, block, plain)

    def pass2(self, lineno, block):
        return self.fill.feed(lineno, block, _plain_values(block))

    def restart(self):
        self.fill = _CStream(self.path, ints=True)

    def done(self) -> bool:
        return bool(self.count.stopped and self.fill.stopped)

    def notes(self) -> list[str]:
        if not self.count.stopped:
            return []
        line, token = self.count.stopped
        return [f"WARNING: {where(self.path, line)}: reading stopped at '{show(token)}' "
                f"(not a number), as nanoBragg.c does; {self.n} entries read"]


# ----------------------------------------------------------------------------- grid

def _warnings(entries: np.ndarray, first: int = 0) -> list[str]:
    """The C's pass-1 warnings, in its order (entry by entry, then h, k, l)."""
    idx = entries[:, :3]
    with np.errstate(invalid="ignore"):
        flagged = idx != np.ceil(idx - 0.4)
    messages = []
    for n, col in zip(*np.nonzero(flagged)):
        messages.append(f"WARNING: non-integer value for {'hkl'[col]} "
                        f"({fmt_g(float(idx[n, col]))}) at line {first + n}")
    return messages


def _c_int(x: float) -> int:
    """(int) of a double on x86: truncation toward zero, INT_MIN when out of range."""
    if not math.isfinite(x) or not -2.0 ** 31 < x < 2.0 ** 31:
        return _INT_MIN
    return int(x)


def _grid_shape(path, ranges, bounds) -> tuple[int, int, int]:
    shape = tuple(r + 1 for r in ranges)
    h0, h1, k0, k1, l0, l1 = bounds
    cells = math.prod(shape)
    what = (f"the {shape[0]} x {shape[1]} x {shape[2]} grid of F (float64; h {h0}..{h1}, "
            f"k {k0}..{k1}, l {l0}..{l1})")
    if _common.available_memory() is None:
        if cells > MAX_GRID_CELLS:
            raise ConfigError(f"{path}: {what} has {cells} cells, more than the "
                              f"{MAX_GRID_CELLS} allowed")
    else:
        _common.check_memory(path, 8 * cells, what)
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


# ----------------------------------------------------------------------------- Fdump.bin

def fdump_chunks(hkl: HKLData):
    """The bytes of the C's Fdump.bin, as an iterator of pieces (the header, then one h slab
    at a time, so no copy of the grid is made): "%d %d %d %d %d %d\\n\\f" (h_min h_max k_min
    k_max l_min l_max), then every grid value, padding included, as little-endian float64 in
    C order (h slowest, l fastest). The shape is checked now, not when iterated."""
    F = as_numpy(hkl.F)
    bounds = [int(x) for x in (hkl.h_min, hkl.h_max, hkl.k_min, hkl.k_max, hkl.l_min, hkl.l_max)]
    shape = (bounds[1] - bounds[0] + 2, bounds[3] - bounds[2] + 2, bounds[5] - bounds[4] + 2)
    if F.shape != shape:
        raise ValueError(f"HKL grid shape {F.shape} does not match its index ranges {shape}")
    header = ("%d %d %d %d %d %d\n\f" % tuple(bounds)).encode("ascii")

    def pieces():
        yield header
        for slab in F:
            yield np.ascontiguousarray(slab, dtype="<f8").tobytes()
    return pieces()


def write_fdump(path, hkl: HKLData) -> None:
    """Write the C's Fdump.bin (see fdump_chunks), atomically."""
    atomic_write(path, fdump_chunks(hkl))


_FDUMP_HEAD = 4096      # the six integers and the "\n\f" are within this


def read_fdump(path, c_quirk: bool = False) -> HKLData:
    """Read an Fdump.bin written by write_fdump or by nanoBragg.c.

    c_quirk=False: the header must be followed by exactly "\\n\\f", and the
    file must hold exactly the grid after it (a longer file is refused as
    garbled).
    c_quirk=True: like the C's fscanf("%d%d%d%d%d%d\\n\\f"), whose "\\n" and
    "\\f" directives skip ANY run of whitespace: a first double starting with
    a byte 0x09-0x0D or 0x20 loses it and the whole grid is read shifted
    (the missing final byte(s) read as 0, as the C's partial fread into
    calloc'd memory); bytes after the grid are ignored, as by the C.
    Both: a file too short for its grid (truncated), a header that is not six
    integers, or a value that is not finite is a ConfigError naming the file.
    hkls = h_range * k_range * l_range (the C's count; only != 0 matters).
    """
    fh, size = open_input(path)
    with fh:
        head = fh.read(_FDUMP_HEAD)
        bounds, pos = [], 0
        for _ in range(6):
            got = scan_int(head, pos)
            if got is None or got[1] >= len(head):
                raise ConfigError(f"{path}: not an Fdump file (header must be six integers "
                                  f"h_min h_max k_min k_max l_min l_max)")
            bounds.append(got[0])
            pos = got[1]
        swallowed = 0
        if c_quirk:
            start, pos = pos, skip_space(head, pos)
            if pos >= len(head) == _FDUMP_HEAD:
                raise ConfigError(f"{path}: not an Fdump file (no data after the header)")
            swallowed = max(0, pos - start - 2)     # bytes of the first double eaten
        elif head[pos:pos + 2] == b"\n\f":
            pos += 2
        else:
            raise ConfigError(f"{path}: not an Fdump file (header not followed by newline, "
                              f"form feed)")
        h_min, h_max, k_min, k_max, l_min, l_max = bounds
        ranges = (h_max - h_min + 1, k_max - k_min + 1, l_max - l_min + 1)
        if min(ranges) < 1:
            raise ConfigError(f"{path}: invalid index ranges in Fdump header "
                              f"(h {h_min}..{h_max}, k {k_min}..{k_max}, l {l_min}..{l_max})")
        shape = tuple(r + 1 for r in ranges)
        need, have = 8 * math.prod(shape), size - pos
        grid = f"a {shape[0]} x {shape[1]} x {shape[2]} grid"
        if have < need and not (c_quirk and need - have <= swallowed):
            raise ConfigError(f"{path}: Fdump file too short (truncated?): {have} data bytes, "
                              f"need {need} for {grid}")
        if have > need and not c_quirk:
            raise ConfigError(f"{path}: Fdump file garbled: {have - need} bytes more than "
                              f"{grid} needs")
        shape = _grid_shape(path, ranges, bounds)
        F = np.zeros(shape, dtype="<f8")
        fh.seek(pos)
        _read_into(path, fh, memoryview(F.reshape(-1)).cast("B")[:min(need, have)])
    for i, slab in enumerate(F):
        if not np.isfinite(slab).all():
            j, k = (int(x[0]) for x in np.nonzero(~np.isfinite(slab)))
            raise ConfigError(f"{path}: Fdump file garbled: F({h_min + i},{k_min + j},"
                              f"{l_min + k}) = {fmt_g(float(slab[j, k]))} is not finite")
    return HKLData(F=F.astype(np.float64, copy=False), h_min=h_min, h_max=h_max, k_min=k_min,
                   k_max=k_max, l_min=l_min, l_max=l_max,
                   hkls=ranges[0] * ranges[1] * ranges[2], source=str(path))


def _read_into(path, fh, view: memoryview) -> None:
    done = 0
    while done < len(view):
        try:
            n = fh.readinto(view[done:done + 64 * MiB])
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read file ({exc.strerror or exc})") from None
        if not n:
            raise ConfigError(f"{path}: Fdump file changed while it was read (truncated)")
        done += n
