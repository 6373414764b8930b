"""A small flag-table parser for the suite commands (nonbragg-torch, noisify-torch, floatadd-torch).

The C programs match every argv word against every option pattern with
``strstr`` and silently ignore what they do not know.  Like the nanoBragg
command line (cli.py), these ports match exact flag names (the C's spellings
and aliases), take values positionally (so ``-5`` is a value), let later flags
win, and stop on anything they do not understand with one line naming the
flag.  Where the C's substring matching changes the meaning of an argv, the
program records the C's reading for ``-mode c-parity`` itself.

The value converters and error types are the nanoBragg command line's.
"""
from __future__ import annotations

import difflib
import sys
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

from .cli import FILE, FileError, FlagError, _is_number          # noqa: F401  (re-exported)
from .cli import _one_line as one_line, flag_listing
from .entry import VERSION_FLAGS, console_exit, guarded, print_version, say_error
from .errors import ConfigError, UsageError

HELP = ("-h", "--help", "-help")


@dataclass(frozen=True)
class Flag:
    """One row of a flag table: names (canonical first), value names, one converter
    per value, apply(state, values) and the usage line."""
    names: Tuple[str, ...]
    metavar: str
    convs: tuple
    apply: Callable
    help: str
    group: str = ""

    @property
    def name(self) -> str:
        return self.names[0]


def table(group: str, rows) -> List[Flag]:
    """Rows (names, metavar, convs, apply, help) -> Flags; names is a space-separated string."""
    return [Flag(tuple(r[0].split()), r[1], r[2], r[3], r[4], group) for r in rows]


@dataclass
class Use:
    flag: Flag
    name: str            # as typed
    index: int           # argv position of the flag word
    values: list


class Parser:
    """Exact-name tokenizer over a flag table.

    positional(word, index) -> bool may accept a word that is no flag (noisify's
    "...floatimage.bin", float_add's file names); anything else is an error.
    refused: {spelling: the flags to use} for words the C's examples or README use
    but its parser ignores (docs/flags.md); they are refused naming those flags.
    """

    def __init__(self, prog: str, flags: Sequence[Flag], positional: Optional[Callable] = None,
                 refused: Optional[dict] = None):
        self.prog = prog
        self.flags = list(flags)
        self.by_name = {n: f for f in self.flags for n in f.names}
        assert len(self.by_name) == sum(len(f.names) for f in self.flags), "duplicate flag name"
        self.positional = positional
        self.refused = dict(refused or {})

    def tokenize(self, argv: Sequence[str]) -> List[Use]:
        uses, i = [], 0
        while i < len(argv):
            tok = argv[i]
            flag = self.by_name.get(tok)
            if flag is None:
                if self.positional is not None and self.positional(tok, i):
                    i += 1
                    continue
                raise self.unknown(tok)
            vals = []
            for k, conv in enumerate(flag.convs):
                j = i + 1 + k
                if j >= len(argv) or argv[j] in self.by_name:
                    raise FlagError(self._needs(tok, flag, argv, j))
                vals.append(conv(tok, argv[j]))
            uses.append(Use(flag, tok, i, vals))
            i += 1 + len(flag.convs)
        return uses

    def _needs(self, name, flag, argv, j) -> str:
        n = len(flag.convs)
        msg = f"flag {name} needs {n} value{'s' if n != 1 else ''} ({flag.metavar})"
        if j < len(argv):
            msg += f", got flag {argv[j]!r}"
        return msg

    def unknown(self, tok: str) -> ConfigError:
        if tok in HELP:
            return UsageError("usage:")
        if not tok.startswith("-") or _is_number(tok):
            return FlagError(f"unexpected argument {tok!r} (no flag takes it as a value)")
        if tok in self.refused:
            return FlagError(f"{tok} is not a {self.prog.replace('-torch', '')} flag (it appears "
                             f"only in examples; the C ignores it); use {self.refused[tok]}")
        key = "-" + tok.lstrip("-").lower()
        close = [n for n in self.by_name if n.lower() == key]
        if not close:
            close = difflib.get_close_matches(tok, list(self.by_name), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else "; see -h for the list"
        return FlagError(f"unknown flag {tok!r}{hint}")

    def usage(self, head: str) -> str:
        return flag_listing([head], self.flags)



def run_main(prog: str, argv: Sequence[str], parse: Callable, execute: Callable, usage: Callable,
             outputs: Optional[Callable] = None) -> int:
    """The shared entry point: parse, run, one-line errors (exit 2 for flags, 1 for files),
    usage and exit 9 where the C prints its usage; -debug shows tracebacks.

    outputs(cfg) -> io.outputs.OutputSet: the files the run writes and reads; they are
    checked before execute(cfg) and its writers stage into it, so a failed or
    interrupted run leaves no new or changed file. Interruptions, a failing stdout
    and MemoryError end in one line (entry.guarded).
    """
    argv = [str(a) for a in argv]
    return guarded(prog, lambda: _run(prog, argv, parse, execute, usage, outputs))


def _run(prog, argv, parse, execute, usage, outputs) -> int:
    if any(a in HELP for a in argv):
        sys.stdout.write(usage())
        return 0
    if any(a in VERSION_FLAGS for a in argv):
        return print_version(prog)
    debug = "-debug" in argv
    argv = [a for a in argv if a != "-debug"]
    try:
        cfg = parse(argv)
        if outputs is None:
            return int(execute(cfg) or 0)
        files = outputs(cfg)
        files.check()
        with files.staged() as stage:
            status = int(execute(cfg) or 0)
            sys.stdout.flush()         # a closed or full stdout fails before any file is in place
            if status:
                stage.discard()
        return status
    except UsageError as err:
        msg = str(err).strip()
        if msg and msg != "usage:":
            print(msg)
        sys.stdout.write(usage())
        return 9
    except ConfigError as err:
        if debug:
            raise
        sys.stdout.flush()
        say_error(prog, f"error: {one_line(err)}")
        return 2 if isinstance(err, FlagError) else 1


def main_cli(prog: str, main: Callable) -> None:
    """A suite command's console entry point (entry.console_exit)."""
    console_exit(prog, main)
