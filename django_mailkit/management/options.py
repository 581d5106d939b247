"""
Checking the options of django_mailkit's management commands.

Every value an operator types is checked here, whether it came from the
command line (a string) or from ``call_command()`` (any type): anything out
of range raises CommandError with one line that names the option, what it
takes and what it got. Stored values shown on a terminal go through
``printable()``.
"""

from __future__ import annotations

import math
import re
from typing import Any

from django.core.management.base import CommandError

from ..handler import mailers

#: Far beyond any real use, small enough for every database and for
#: ``time.sleep()``/``timedelta``.
MAX_SECONDS = 86_400.0
MAX_COUNT = 1_000_000
MAX_BATCH = 10_000
MAX_DAYS = 36_500
MAX_ID = 2**63 - 1


def _shown(value: Any) -> str:
    return printable(repr(value))


def whole_number(option: str, value: Any, *, minimum: int, maximum: int) -> int:
    """Return ``value`` as an int in [minimum, maximum], or raise CommandError."""
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        number = int(value)
    if number is None or not minimum <= number <= maximum:
        raise CommandError(
            f"{option} must be a whole number from {minimum} to {maximum}; "
            f"got {_shown(value)}."
        )
    return number


def seconds(option: str, value: Any, *, maximum: float = MAX_SECONDS) -> float:
    """Return ``value`` as a finite number of seconds in [0, maximum]."""
    number: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    if number is None or not math.isfinite(number) or not 0 <= number <= maximum:
        raise CommandError(
            f"{option} must be a number of seconds from 0 to {maximum:g}; "
            f"got {_shown(value)}."
        )
    return number


def mailer_alias(option: str, value: str, *, also: set[str] | None = None) -> str:
    """
    Return ``value`` if it is a configured mailer alias (or in ``also``).

    Otherwise raise CommandError listing the configured aliases.
    """
    configured = mailers.aliases()
    if value in configured or (also and value in also):
        return value
    raise CommandError(
        f"{option}: there is no mailer {_shown(value)}. Configured mailers: "
        f"{', '.join(printable(alias) for alias in configured)}."
    )


# C0 and C1 controls and DEL; line and paragraph separators; the bidi
# controls that reorder what a terminal shows (Trojan Source).
_UNPRINTABLE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u2028\u2029\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]"
)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(value: object) -> str:
    """
    Return ``str(value)`` safe to print on a terminal.

    Control characters (escape sequences, carriage returns, newlines, bidi
    overrides) are written as ``\\x1b``-style escapes instead, so a stored
    subject or SMTP reply can neither drive the operator's terminal nor
    fake extra lines of output.
    """
    return _UNPRINTABLE.sub(_escape, str(value))
