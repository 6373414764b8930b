"""C (glibc) number parsing: atof/strtod, atoi, and scanf's %lg / %d.

nanoBragg.c reads SMV header values with atof, text tables with atof and
HKL/matrix/Fdump files with fscanf. The functions here reproduce what glibc
does with the same characters, so files read the same in the port.
"""
from __future__ import annotations

import math
import re

# C isspace() in the "C" locale (Python's str.isspace() accepts more).
C_SPACE = " \t\n\v\f\r"
C_SPACE_BYTES = b" \t\n\v\f\r"

# glibc strtod grammar after the optional sign (C locale, no grouping).
_STRTOD = re.compile(
    r"[ \t\n\v\f\r]*(?P<num>[+-]?(?:"
    r"(?P<inf>(?i:inf(?:inity)?))"
    r"|(?P<nan>(?i:nan)(?:\([0-9A-Za-z_]*\))?)"
    r"|(?P<hex>0[xX](?:[0-9a-fA-F]+(?:\.[0-9a-fA-F]*)?|\.[0-9a-fA-F]+)(?:[pP][+-]?[0-9]+)?)"
    r"|(?P<dec>(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)"
    r"))"
)

# What glibc's scanf %lg/%lf pulls off the stream (it is greedier than
# strtod: "1e" and "1e+" are consumed whole and read as 1).
_SCANF_HEX = re.compile(
    rb"[+-]?0[xX](?:(?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)(?:[pP][+-]?[0-9]*)?|\.)?")
_SCANF_DEC = re.compile(rb"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]*)?")
_SCANF_INF = re.compile(rb"[+-]?(?i:inf)")
_SCANF_NAN = re.compile(rb"[+-]?(?i:nan)")
_SCANF_INT = re.compile(rb"[+-]?[0-9]+")
_SCANF_SKIP = re.compile(rb"[ \t\n\v\f\r]*")

_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


def strtod_prefix(s: str) -> tuple[float, int]:
    """glibc strtod: (value, characters consumed incl. leading space); (0.0, 0) if no number."""
    m = _STRTOD.match(s)
    if m is None:
        return 0.0, 0
    return _convert(m.group("num"), m), m.end()


def _convert(text: str, m: re.Match) -> float:
    neg = text.startswith("-")
    if m.group("inf"):
        return -math.inf if neg else math.inf
    if m.group("nan"):
        return math.copysign(math.nan, -1.0 if neg else 1.0)
    if m.group("hex"):
        try:
            return float.fromhex(text)
        except OverflowError:   # strtod gives +-HUGE_VAL (inf) with ERANGE
            return -math.inf if neg else math.inf
    return float(text)          # correctly rounded, like glibc


def c_atof(s: str) -> float:
    """C atof(): skip leading whitespace, convert the longest valid prefix, 0.0 if none.

    Accepts what glibc strtod accepts: decimal, hex floats (0x1.8p3), inf,
    infinity, nan and nan(chars), any case.
    """
    return strtod_prefix(s)[0]


def c_atoi(s: str) -> int:
    """C atoi() as glibc implements it: (int) strtol(s, NULL, 10).

    Only the leading [+-]digits count ("12.7" -> 12, "x" -> 0); strtol
    saturates at the 64-bit limits and the cast to int keeps the low 32 bits.
    """
    m = _SCANF_INT.match(s.lstrip(C_SPACE).encode("latin-1", "replace"))
    return _wrap_int32(int(m.group())) if m else 0


def _wrap_int32(v: int) -> int:
    v = min(max(v, _INT64_MIN), _INT64_MAX)
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= (1 << 31) else v


def skip_space(buf: bytes, pos: int) -> int:
    """Index of the first non-whitespace byte at or after pos (C isspace)."""
    return _SCANF_SKIP.match(buf, pos).end()


def scan_double(buf: bytes, pos: int) -> tuple[float, int] | None:
    """One glibc scanf "%lg" conversion at buf[pos:]: (value, new pos) or None on failure.

    Leading whitespace is skipped. Mirrors glibc's reader: "1e" / "1e+" /
    "0x1p" are consumed whole (value from the digits before), "0x" alone,
    ".", "+", "infinit", "na" fail; "nan(...)" stops after "nan".
    """
    pos = skip_space(buf, pos)
    for rx, kind in ((_SCANF_INF, "inf"), (_SCANF_NAN, "nan")):
        m = rx.match(buf, pos)
        if m:
            if kind == "inf":
                return _scan_inf(buf, m)
            neg = buf[pos:pos + 1] == b"-"
            return math.copysign(math.nan, -1.0 if neg else 1.0), m.end()
    if buf[pos:pos + 1] in (b"+", b"-"):
        nxt = buf[pos + 1:pos + 2].lower()
        if nxt in (b"i", b"n"):
            return None         # "-in", "+na": glibc fails
    elif buf[pos:pos + 1].lower() in (b"i", b"n"):
        return None
    m = _SCANF_HEX.match(buf, pos)
    if m:
        text = m.group()
        if text.lstrip(b"+-") in (b"0x", b"0X"):
            return None         # glibc: only the "0x" prefix read is an error
        return c_atof(text.decode("ascii")), m.end()
    m = _SCANF_DEC.match(buf, pos)
    if m:
        return c_atof(m.group().decode("ascii")), m.end()
    return None


def _scan_inf(buf: bytes, m: re.Match) -> tuple[float, int] | None:
    end = m.end()
    neg = buf[m.start():m.start() + 1] == b"-"
    if buf[end:end + 1].lower() == b"i":
        # glibc commits to "infinity" once it sees the 'i' after "inf"
        if buf[end:end + 5].lower() != b"inity":
            return None
        end += 5
    return (-math.inf if neg else math.inf), end


def scan_int(buf: bytes, pos: int) -> tuple[int, int] | None:
    """One glibc scanf "%d" conversion: (value, new pos) or None on failure.

    Values outside int range wrap like glibc's (int) strtol.
    """
    pos = skip_space(buf, pos)
    m = _SCANF_INT.match(buf, pos)
    if m is None:
        return None
    return _wrap_int32(int(m.group())), m.end()


def is_c_number(token: str) -> bool:
    """True if strtod consumes the whole token (no leading space allowed)."""
    if not token or token[0] in C_SPACE:
        return False
    return strtod_prefix(token)[1] == len(token)


def fmt_g(x) -> str:
    """C printf("%g") of a double; ints print with %d as the C's integer fields do.

    Python's "%g" matches glibc except for NaN with the sign bit set
    ("-nan" in C).
    """
    if isinstance(x, bool):
        x = int(x)
    if isinstance(x, int):
        return "%d" % x
    x = float(x)
    if math.isnan(x):
        return "-nan" if math.copysign(1.0, x) < 0 else "nan"
    return "%g" % x
