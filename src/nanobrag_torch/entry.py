"""What the four command lines share around their work: one line for every way a run can
end badly, and a fast exit.

    def main(argv) -> int:
        return guarded(PROG, lambda: body(argv))     # in-process: an exit status, never a traceback

    def main_cli() -> None:
        console_exit(PROG, main)                     # the console script: SIGTERM, flush, os._exit

`guarded` turns, while body runs (all outputs are staged: io.outputs),
- Ctrl-C into "PROG: interrupted; no files written" and exit 130, SIGTERM (with
  console_exit's handler) into the same line and exit 143;
- a failing write to standard output (a closed pipe, a full disk) into one
  line on stderr and exit 1, before any output file is put in place;
- MemoryError into one line and exit 1.
A signal that arrives while the staged files are being renamed is delivered
after the renames; the line then says the files were written.
"""
from __future__ import annotations

import os
import signal
import sys
from typing import Callable, Sequence

VERSION_FLAGS = ("-version", "--version")


class Terminated(BaseException):
    """SIGTERM, raised in the main thread by the handler console_exit installs."""


def _on_sigterm(signum, frame):
    raise Terminated()


class StdoutError(Exception):
    """A write to standard output failed (the reader closed the pipe, the disk is full)."""

    def __init__(self, exc: OSError):
        super().__init__(exc.strerror or str(exc))


class _GuardedStdout:
    """sys.stdout during a run: a failing write or flush raises StdoutError, so it is told
    apart from a failing output file and reported in one line."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        try:
            return self._stream.write(text)
        except (OSError, ValueError) as exc:        # ValueError: the stream was closed
            raise StdoutError(exc if isinstance(exc, OSError) else OSError(str(exc))) from None

    def flush(self):
        try:
            self._stream.flush()
        except (OSError, ValueError) as exc:
            raise StdoutError(exc if isinstance(exc, OSError) else OSError(str(exc))) from None

    def __getattr__(self, name):
        return getattr(self._stream, name)


def say_error(prog: str, message: str) -> None:
    """'PROG: message' on stderr; never raises (stderr may be closed too)."""
    try:
        sys.stderr.write(f"{prog}: {message}\n")
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):
        pass


def print_version(prog: str) -> int:
    from . import __version__
    print(f"{prog} {__version__}")
    return 0


def guarded(prog: str, body: Callable[[], int]) -> int:
    """body()'s exit status; interruptions, stdout failures and MemoryError as one line."""
    if sys.stdout is None:
        say_error(prog, "error: standard output is closed (give it a file, e.g. > log.txt "
                        "or > /dev/null)")
        return 1
    stdout = sys.stdout
    sys.stdout = _GuardedStdout(stdout)
    try:
        status = int(body() or 0)
        sys.stdout.flush()
        return status
    except KeyboardInterrupt as exc:
        return _interrupted(prog, exc, 130)
    except Terminated as exc:
        return _interrupted(prog, exc, 143)
    except StdoutError as err:
        say_error(prog, f"error: cannot write to standard output ({err}); no files written")
        return 1
    except MemoryError:
        say_error(prog, "error: out of memory; no files written")
        return 1
    finally:
        sys.stdout = stdout


def _interrupted(prog: str, exc: BaseException, status: int) -> int:
    if getattr(exc, "outputs_written", False):
        say_error(prog, "interrupted after every output file was complete and written")
    elif getattr(exc, "shots_kept", 0):
        say_error(prog, f"interrupted; the {exc.shots_kept} shots of the finished blocks are in place "
                        f"(run the same command again to render the rest)")
    else:
        say_error(prog, "interrupted; no files written")
    return status


def console_exit(prog: str, main: Callable[[Sequence[str]], int]) -> None:
    """The console script: main(sys.argv[1:]) with SIGTERM handled, then a fast exit.

    Every output file is complete (or absent) by the time main returns; the
    interpreter's teardown of torch (about half a second) is skipped by leaving
    with os._exit after flushing the streams.
    """
    try:
        signal.signal(signal.SIGTERM, _on_sigterm)
    except (ValueError, OSError):
        pass
    try:
        status = main(sys.argv[1:])
    except KeyboardInterrupt:            # outside guarded (while parsing -h, say)
        status = _interrupted(prog, KeyboardInterrupt(), 130)
    except Terminated:
        status = _interrupted(prog, Terminated(), 143)
    try:
        sys.stdout.flush()
    except (OSError, ValueError, AttributeError) as exc:
        if status == 0:
            say_error(prog, f"error: cannot write to standard output "
                            f"({getattr(exc, 'strerror', None) or exc})")
            status = 1
    try:
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):
        pass
    os._exit(status)
