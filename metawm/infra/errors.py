"""User-facing errors: one paragraph, exit status 2, no traceback.

Anything a user can get wrong (a name, an override, a path, a checkpoint) raises
:class:`UserError`; :func:`cli` turns it into a clean message. Other exceptions are bugs and keep
their tracebacks.
"""

from __future__ import annotations

import functools
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


def cli(main: Callable[[list[str]], int | None]) -> Callable[[list[str] | None], int]:
    """Wrap an entry point: UserError -> message on stderr and exit status 2."""

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> int:
        argv = sys.argv[1:] if argv is None else argv
        try:
            return int(main(argv) or 0)
        except UserError as e:
            prog = getattr(main, "__module__", "metawm")
            if prog == "__main__":
                spec = getattr(sys.modules["__main__"], "__spec__", None)
                prog = spec.name if spec else "metawm"
            print(f"error ({prog}): " + textwrap.fill(str(e), width=100, subsequent_indent="  "), file=sys.stderr)
            return EXIT_USER_ERROR
        except KeyboardInterrupt:
            print("interrupted; re-run the same command to resume from the last checkpoint.", file=sys.stderr)
            return 130

    return wrapper
