"""User-facing errors: one paragraph, exit status 2, no traceback.

Anything a user can get wrong (a name, an override, a path, a checkpoint) raises
:class:`UserError`; :func:`cli` turns it into a clean message. Other exceptions are bugs and keep
their tracebacks.
"""

from __future__ import annotations

import functools
import os
import sys
import textwrap
from typing import Callable, Iterable

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A mistake in input that the user can fix; the message says what and how."""


def choices_error(what: str, given: str, valid: Iterable[str], hint: str = "") -> UserError:
    valid = sorted(valid)
    msg = f"Unknown {what} {given!r}. Valid choices: {', '.join(valid) if valid else '(none)'}."
    if hint:
        msg += " " + hint
    return UserError(msg)


def _fill(message: str) -> str:
    """Wrap for a terminal only; in a log file (SLURM's, CI's) a message stays one line per
    paragraph, so paths and overrides in it can be copied and grepped whole."""
    if not sys.stderr.isatty():
        return message
    return "\n".join(textwrap.fill(line, width=100, subsequent_indent="  ", break_long_words=False,
                                    break_on_hyphens=False) for line in message.splitlines())


def cli(main: Callable[[list[str]], int | None]) -> Callable[[list[str] | None], int]:
    """Wrap an entry point: UserError -> message on stderr and exit status 2; a closed stdout pipe
    -> a quiet exit."""

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> int:
        argv = sys.argv[1:] if argv is None else argv
        try:
            code = int(main(argv) or 0)
            sys.stdout.flush()  # a closed pipe (``--help | head``) surfaces here, not at interpreter exit
            return code
        except BrokenPipeError:
            # the reader went away (``| head``): the output it wanted has been written; point stdout at
            # devnull so that the interpreter's final flush does not print a traceback (Python docs,
            # "Note on SIGPIPE" in the signal module)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        except UserError as e:
            prog = getattr(main, "__module__", "metawm")
            if prog == "__main__":
                spec = getattr(sys.modules["__main__"], "__spec__", None)
                prog = spec.name if spec else "metawm"
            print(f"error ({prog}): " + _fill(str(e)), file=sys.stderr)
            return EXIT_USER_ERROR
        except KeyboardInterrupt:
            print("interrupted; re-run the same command to resume from the last checkpoint.", file=sys.stderr)
            return 130

    return wrapper
