"""
The demo's mail sink: a local SMTP server (aiosmtpd) that keeps what it gets.

It accepts every recipient except those whose local part starts with
"refused", which it refuses with a permanent 550, so the outbox has a
failure to show. Each message it accepts is saved as ``NNNN.eml``.
"""

from __future__ import annotations

import email
import email.policy
import itertools
import threading
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

REFUSED_PREFIX = "refused"


class SinkHandler:
    """aiosmtpd handler: refuse "refused*" recipients, save the rest."""

    def __init__(self, directory: Path, *, echo: Any = print) -> None:
        self.directory = directory
        self.echo = echo
        self.received: list[Path] = []
        self._lock = threading.Lock()
        existing = [int(p.stem) for p in directory.glob("*.eml") if p.stem.isdigit()]
        self._numbers = itertools.count(max(existing, default=0) + 1)

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if address.partition("@")[0].lower().startswith(REFUSED_PREFIX):
            return f"550 5.1.1 <{address}>: Recipient address rejected: no such user"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        data = envelope.original_content or envelope.content
        with self._lock:
            path = self.directory / f"{next(self._numbers):04d}.eml"
            path.write_bytes(data)
            self.received.append(path)
        message = email.message_from_bytes(data, policy=email.policy.default)
        self.echo(
            f"  [sink] {message.get('Subject', '')!r} for "
            f"{', '.join(envelope.rcpt_tos)} -> {path.name}"
        )
        return f"250 2.0.0 OK: saved as {path.name}"


def start_sink(directory: Path, port: int, *, echo: Any = print) -> Controller:
    """Start the sink on 127.0.0.1:``port``; return its controller."""
    directory.mkdir(parents=True, exist_ok=True)
    controller = Controller(
        SinkHandler(directory, echo=echo),
        hostname="127.0.0.1",
        port=port,
        server_hostname="sink.demo",
        enable_SMTPUTF8=True,
    )
    controller.start()
    return controller
