"""nanoBragg.c's read_text_file(): multi-column numeric text (source files, -stol tables).

How the C reads a line (fgets, at most 10239 bytes at a time):
  skip delimiters " \\t,;:!"; a line that is then exactly "\\n" is blank (skipped,
  not counted). Otherwise, for column i = 0, 1, ...: value = atof(rest);
  skip characters of "0123456789-+.EGeg"; stop if the rest is "\\n"; skip
  non-delimiters, then delimiters; stop if the rest is "\\n"; stop after
  nargs columns. Columns never reached stay NaN ("missing").
Quirk (SPEC 3.4): the stop tests compare with "\\n" exactly, so on a last line
without a newline (or a "\\r\\n" line) the scan runs on past the last number and
atof("") = 0 fills every remaining column with 0 instead of leaving NaN.
"""
from __future__ import annotations

import math
import re

import numpy as np

from nanobrag_torch.errors import ConfigError
from nanobrag_torch.io._common import MiB, read_bytes, show, where
from nanobrag_torch.io.cnum import c_atof, is_c_number

FGETS_MAX = 10239          # char text[10240] in read_text_file
TABLE_LIMIT = 64 * MiB     # larger tables are refused (about a million lines)

_DELIMS = re.compile(r"[ \t,;:!]*")
_NON_DELIMS = re.compile(r"[^ \t,;:!]*")
_NUMBERSTUF = re.compile(r"[0-9\-+.EGeg]*")
_SPLIT = re.compile(r"[ \t,;:!]+")


def fgets_chunks(raw: bytes):
    """(line number, text, cut) for each piece successive fgets(text, 10240) calls return.

    Text is cut at the first NUL, as the C's string functions see it; cut is
    True when fgets split an over-long line there.
    """
    pos, lineno = 0, 1
    while pos < len(raw):
        nl = raw.find(b"\n", pos, pos + FGETS_MAX)
        end = nl + 1 if nl >= 0 else min(pos + FGETS_MAX, len(raw))
        yield lineno, raw[pos:end].split(b"\0", 1)[0].decode("latin-1"), nl < 0 and end < len(raw)
        lineno += nl >= 0
        pos = end


def c_row(text: str, nargs: int) -> list | None:
    """The C's parse of one fgets line: nargs values (NaN = missing), or None if blank."""
    got = _c_row(text, nargs)
    return None if got is None else got[0]


def _c_row(text: str, nargs: int):
    """(values, how many columns were read) as c_row, or None for a blank line."""
    pos = _DELIMS.match(text).end()
    if text[pos:] == "\n":
        return None
    values = [float("nan")] * nargs
    i = 0
    while True:
        values[i] = c_atof(text[pos:])
        pos = _NUMBERSTUF.match(text, pos).end()
        if text[pos:] == "\n":
            break
        pos = _NON_DELIMS.match(text, pos).end()
        pos = _DELIMS.match(text, pos).end()
        if text[pos:] == "\n":
            break
        i += 1
        if i >= nargs:
            i -= 1
            break
    return values, i + 1


# what the C makes of a comment line, per kind of table (the message of check_row)
_COMMENT_READS = {"source file": "a source at the origin with wavelength 0",
                  "stol table": "a point (0, 0), which repeats an abscissa and makes NaN pixels"}


def check_row(path, lineno: int, text: str, nargs: int, what: str) -> None:
    """Strict (spec-mode) checks of one counted line: only numbers, at most nargs of them.

    A trailing "\\r\\n" is accepted as a line end (values are still the C's).
    """
    content = text[:-1] if text.endswith("\n") else text
    content = content[:-1] if content.endswith("\r") else content
    tokens = [t for t in _SPLIT.split(content) if t]
    at = where(path, lineno)
    if content.lstrip(" \t,;:!").startswith("#"):
        raise ConfigError(f"{at}: comment lines are not allowed in a {what}: the C would read "
                          f"them as {_COMMENT_READS.get(what, 'a row of zeros')}")
    if not tokens:
        raise ConfigError(f"{at}: line without numbers (only delimiters or a carriage "
                          f"return): the C would read it as a row of zeros")
    bad = next((t for t in tokens if not is_c_number(t)), None)
    if bad is not None:
        raise ConfigError(f"{at}: expected numbers, got '{show(bad)}' in '{show(content)}'")
    if len(tokens) > nargs:
        raise ConfigError(f"{at}: {len(tokens)} columns, at most {nargs} are allowed")


def read_text_table(path, nargs: int, strict: bool, what: str, lines: bool = False):
    """(lines, nargs) float64 table as read_text_file fills it (NaN = missing).

    strict adds check_row on every line and rejects over-long lines and NUL
    bytes. Both modes: a number read that is not finite (nan, inf, 1e999) is
    refused with file:line, an empty table is a ConfigError (the C exits 9),
    and files above TABLE_LIMIT are refused. lines=True also returns the line
    number of each row.
    """
    raw = read_bytes(path, TABLE_LIMIT, f"a {what}")
    if strict and b"\0" in raw:
        line = raw.count(b"\n", 0, raw.index(b"\0")) + 1
        raise ConfigError(f"{where(path, line)}: binary data in a text file (NUL byte)")
    rows, linenos = [], []
    for lineno, text, truncated in fgets_chunks(raw):
        got = _c_row(text, nargs)
        if got is None:
            continue
        values, nread = got
        if strict:
            if truncated:
                raise ConfigError(f"{where(path, lineno)}: line longer than {FGETS_MAX} characters")
            check_row(path, lineno, text, nargs, what)
        bad = next((v for v in values[:nread] if not math.isfinite(v)), None)
        if bad is not None:
            raise ConfigError(f"{where(path, lineno)}: {bad:g} is not a finite number, "
                              f"in '{show(text)}'")
        rows.append(values)
        linenos.append(lineno)
    if not rows:
        raise ConfigError(f"{path}: no data in {what} (empty or only blank lines)")
    table = np.array(rows, dtype=np.float64).reshape(-1, nargs)
    return (table, linenos) if lines else table
