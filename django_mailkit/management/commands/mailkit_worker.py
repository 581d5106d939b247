"""``manage.py mailkit_worker``: deliver queued outbox messages."""

from __future__ import annotations

import signal
import sys
from types import FrameType
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ... import conf
from ...worker import Worker
from ..options import (
    MAX_BATCH,
    MAX_ID,
    mailer_alias,
    printable,
    seconds,
    whole_number,
)

OUTBOX_BACKEND = "django_mailkit.backends.outbox.EmailBackend"


class Command(BaseCommand):
    help = (
        "Deliver queued outbox messages. The first SIGTERM/SIGINT finishes "
        "the message in flight and exits; a second exits at once."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--once", action="store_true", help="Deliver what is due, then exit."
        )
        # Numbers are checked in handle(), so that a bad value is one line
        # (CommandError) whether it came from the shell or call_command().
        parser.add_argument(
            "--max-messages", metavar="N", help="Exit after N messages."
        )
        parser.add_argument(
            "--batch-size",
            metavar="N",
            help="Messages claimed at once (default: MAILKIT['BATCH_SIZE']).",
        )
        parser.add_argument(
            "--using",
            metavar="ALIAS",
            help="Only deliver messages for this mailer (the one that sends).",
        )
        parser.add_argument(
            "--interval",
            default=1.0,
            metavar="SECONDS",
            help="Pause when nothing is due (default: %(default)s).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        batch_size = options["batch_size"]
        max_messages = options["max_messages"]
        using = options["using"]
        worker = Worker(
            batch_size=(
                conf.batch_size()
                if batch_size is None
                else whole_number(
                    "--batch-size", batch_size, minimum=1, maximum=MAX_BATCH
                )
            ),
            mailer=None if using is None else self.sending_mailer(using),
            max_messages=(
                None
                if max_messages is None
                else whole_number(
                    "--max-messages", max_messages, minimum=1, maximum=MAX_ID
                )
            ),
            interval=seconds("--interval", options["interval"]),
            once=options["once"],
            stdout=self.stdout,
        )

        def on_signal(signum: int, frame: FrameType | None) -> None:
            if worker.stopping:
                self.stderr.write("Second signal: exiting now.")
                sys.exit(1)
            self.stderr.write("Finishing the message in flight, then exiting.")
            worker.request_stop()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        worker.run()

    def sending_mailer(self, alias: str) -> str:
        """Check ``--using``: a configured mailer that delivers, not an outbox."""
        mailer_alias("--using", alias)
        config = (conf.mailers_setting() or {}).get(alias) or {}
        if config.get("BACKEND") == OUTBOX_BACKEND:
            target = (config.get("OPTIONS") or {}).get("deliver_using")
            raise CommandError(
                f"--using: mailer {printable(repr(alias))} is an outbox; the "
                f"worker delivers its messages with mailer "
                f"{printable(repr(target))} (--using {printable(target)})."
            )
        return alias
