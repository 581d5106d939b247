"""Console backend: writes each message to a stream (stdout by default)."""

from __future__ import annotations

import email.policy
import sys
from typing import Any, TextIO

from ..rendering import render
from .base import _NOT_PROVIDED, BaseEmailBackend

__all__ = ["EmailBackend"]

SEPARATOR = "-" * 79


class EmailBackend(BaseEmailBackend):
    """Write messages to ``stream`` instead of sending them (development)."""

    # Documented: fail_silently ignores every error while writing.
    silenced_errors = (Exception,)

    def __init__(
        self,
        fail_silently: Any = _NOT_PROVIDED,
        *,
        stream: TextIO | None = None,
        **kwargs: Any,
    ) -> None:
        # Positional fail_silently, as Django's console backend takes it.
        super().__init__(fail_silently, **kwargs)
        self.stream = stream

    def deliver(self, message: Any) -> bool:
        """Write the message's wire form, then a separator line."""
        data = render(message, email.policy.default).as_bytes()
        # Looked up per message, not at import, so captured stdout works.
        stream = self.stream if self.stream is not None else sys.stdout
        stream.write(f"{data.decode('utf-8', 'replace')}\n{SEPARATOR}\n")
        stream.flush()
        return True
