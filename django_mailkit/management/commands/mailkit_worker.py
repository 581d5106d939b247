"""``manage.py mailkit_worker``: deliver queued outbox messages."""

from __future__ import annotations

import os
import signal
import sys
import traceback
from collections.abc import Callable
from types import FrameType
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections

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
#: The most worker processes one command forks.
MAX_PROCESSES = 256


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
        parser.add_argument(
            "--processes",
            default=1,
            metavar="N",
            help=(
                "Run N worker processes, forked once Django has started "
                "(default: %(default)s). Signals go to all of them."
            ),
        )

    def handle(self, *args: Any, **options: Any) -> None:
        batch_size = options["batch_size"]
        max_messages = options["max_messages"]
        using = options["using"]
        processes = whole_number(
            "--processes", options["processes"], minimum=1, maximum=MAX_PROCESSES
        )
        settings = {
            "batch_size": (
                conf.batch_size()
                if batch_size is None
                else whole_number(
                    "--batch-size", batch_size, minimum=1, maximum=MAX_BATCH
                )
            ),
            "mailer": None if using is None else self.sending_mailer(using),
            "max_messages": (
                None
                if max_messages is None
                else whole_number(
                    "--max-messages", max_messages, minimum=1, maximum=MAX_ID
                )
            ),
            "interval": seconds("--interval", options["interval"]),
            "once": options["once"],
        }

        def make_worker() -> Worker:
            # In the process that runs it: its name carries that pid.
            return Worker(**settings, stdout=self.stdout)

        if processes == 1:
            self.run_worker(make_worker)
        else:
            self.run_processes(make_worker, processes)

    def run_worker(
        self,
        make_worker: Callable[[], Worker],
        *,
        ready: Callable[[], object] | None = None,
    ) -> None:
        """Run one worker here; the first signal finishes, a second exits."""
        worker = make_worker()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            if worker.stopping:
                self.stderr.write("Second signal: exiting now.")
                sys.exit(1)
            self.stderr.write("Finishing the message in flight, then exiting.")
            worker.request_stop()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        if ready is not None:
            ready()
        worker.run()

    def run_processes(self, make_worker: Callable[[], Worker], count: int) -> None:
        """
        Fork ``count`` workers, pass SIGTERM and SIGINT on to them, wait.

        Forked once Django is set up, the processes share its start-up
        (imports, settings, checks) instead of each paying for it. Each is
        in a process group of its own, so a Ctrl-C reaches it once (passed
        on from here), not twice.
        """
        if not hasattr(os, "fork"):
            raise CommandError(
                "--processes: this platform can't fork; start several "
                "mailkit_worker commands instead."
            )
        # No database connection may be shared with a child.
        connections.close_all()
        children: list[int] = []
        stopping: list[int] = []

        def forward(signum: int, frame: FrameType | None) -> None:
            stopping.append(signum)
            for pid in children:
                try:
                    os.kill(pid, signum)
                except ProcessLookupError:
                    pass

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        signals = {signal.SIGTERM, signal.SIGINT}
        for _ in range(count):
            if stopping:
                break
            self.stdout.flush()
            self.stderr.flush()
            # Held back until the child has its own handlers, and the parent
            # knows the child's pid.
            signal.pthread_sigmask(signal.SIG_BLOCK, signals)
            pid = os.fork()
            if pid == 0:  # the child
                os._exit(self._child(make_worker, signals))
            children.append(pid)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)
        failed = 0
        for pid in children:
            _pid, status = os.waitpid(pid, 0)
            if os.waitstatus_to_exitcode(status) != 0:
                failed += 1
        if failed:
            raise CommandError(f"{failed} of {len(children)} worker processes failed.")

    def _child(
        self, make_worker: Callable[[], Worker], signals: set[signal.Signals]
    ) -> int:
        code = 1
        try:
            os.setpgid(0, 0)
            self.run_worker(
                make_worker,
                # Its own handlers are in place: let the signals in.
                ready=lambda: signal.pthread_sigmask(signal.SIG_UNBLOCK, signals),
            )
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            connections.close_all()
            sys.stdout.flush()
            sys.stderr.flush()
            self.stdout.flush()
            self.stderr.flush()
        return code

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
