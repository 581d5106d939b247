"""``manage.py mailkit_worker``: deliver queued outbox messages."""

from __future__ import annotations

import signal
import sys
from types import FrameType
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from ...worker import Worker


class Command(BaseCommand):
    help = (
        "Deliver queued outbox messages. The first SIGTERM/SIGINT finishes "
        "the message in flight and exits; a second exits at once."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--once", action="store_true", help="Deliver what is due, then exit."
        )
        parser.add_argument(
            "--max-messages", type=int, metavar="N", help="Exit after N messages."
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            metavar="N",
            help="Messages claimed at once (default: MAILKIT['BATCH_SIZE']).",
        )
        parser.add_argument(
            "--using", metavar="ALIAS", help="Only deliver messages for this mailer."
        )
        parser.add_argument(
            "--interval",
            type=float,
            default=1.0,
            metavar="SECONDS",
            help="Pause when nothing is due (default: %(default)s).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        worker = Worker(
            batch_size=options["batch_size"],
            mailer=options["using"],
            max_messages=options["max_messages"],
            interval=options["interval"],
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
