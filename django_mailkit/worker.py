"""
The outbox worker: claims due messages in batches and delivers them.

``manage.py mailkit_worker`` is a thin wrapper around ``Worker``, which tests
drive directly. Many workers, on many hosts, may run at once.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

from django.db import close_old_connections

from . import conf
from .delivery import deliver_batch
from .models import OutboxMessage
from .tasks import worker_name

logger = logging.getLogger("django_mailkit.worker")

__all__ = ["Worker", "WorkerStats"]


class Output(Protocol):
    """Where progress lines go: a text stream, or a command's OutputWrapper."""

    def write(self, text: str, /) -> object: ...

    def flush(self) -> object: ...


@dataclass
class WorkerStats:
    batches: int = 0
    sent: int = 0
    partial: int = 0
    retry: int = 0
    failed: int = 0
    #: Messages not sent because every recipient was suppressed.
    suppressed: int = 0
    recovered: int = 0
    #: Messages another worker took over before this one could write.
    lease_lost: int = 0
    #: Batches that failed as a whole (logged; the worker went on).
    errors: int = 0

    @property
    def handled(self) -> int:
        return self.sent + self.partial + self.retry + self.failed + self.suppressed

    def summary(self) -> str:
        return (
            f"{self.handled} messages in {self.batches} batches: {self.sent} sent, "
            f"{self.partial} partially sent, {self.retry} to retry, "
            f"{self.failed} failed, {self.suppressed} suppressed; "
            f"{self.recovered} recovered from crashed workers."
        )


class Worker:
    """
    Deliver due outbox messages until told to stop.

    ``once`` drains what is due and returns; ``max_messages`` stops after
    that many attempts; ``mailer`` limits the worker to one mailer alias.
    ``request_stop()`` (the first SIGTERM) lets the message in flight finish
    and gives the rest of the batch back to the queue.
    """

    def __init__(
        self,
        *,
        batch_size: int | None = None,
        mailer: str | None = None,
        max_messages: int | None = None,
        interval: float = 1.0,
        once: bool = False,
        name: str | None = None,
        stdout: Output | None = None,
    ) -> None:
        self.batch_size = batch_size or conf.batch_size()
        self.mailer = mailer
        self.max_messages = max_messages
        self.interval = interval
        self.once = once
        self.name = name or worker_name("worker")
        self.stdout = stdout
        self.stats = WorkerStats()
        self._stopping = False

    def request_stop(self) -> None:
        """Finish the message in flight, then stop."""
        self._stopping = True

    @property
    def stopping(self) -> bool:
        return self._stopping

    def run(self) -> WorkerStats:
        """Work until stopped, drained (``once``) or ``max_messages`` is reached."""
        self._say(f"Worker {self.name} started.")
        while not self._stopping:
            remaining = self._remaining()
            if remaining == 0:
                break
            limit = (
                self.batch_size
                if remaining is None
                else min(self.batch_size, remaining)
            )
            try:
                handled = self.run_batch(limit)
            except Exception:
                # The queue must keep moving: log, pause, go on.
                logger.exception("Outbox worker batch failed")
                self.stats.errors += 1
                close_old_connections()
                handled = 0
            if not handled:
                if self.once:
                    break
                self._sleep(self.interval)
        self._say(f"Worker {self.name} stopped: {self.stats.summary()}")
        return self.stats

    def run_batch(self, limit: int) -> int:
        """Claim up to ``limit`` messages and deliver them; return how many."""
        lease = timedelta(seconds=conf.lease_seconds())
        self.stats.recovered += OutboxMessage.objects.recover_expired()
        claimed = OutboxMessage.objects.claim(
            self.name, limit=limit, lease=lease, mailer=self.mailer
        )
        if not claimed:
            return 0
        started = time.monotonic()
        result = deliver_batch(
            claimed, worker=self.name, lease=lease, should_stop=lambda: self._stopping
        )
        self.stats.batches += 1
        self.stats.sent += len(result.sent)
        self.stats.partial += len(result.partial)
        self.stats.retry += len(result.retry)
        self.stats.failed += len(result.failed)
        self.stats.suppressed += len(result.suppressed)
        self.stats.lease_lost += len(result.lease_lost)
        self._say(
            f"Batch of {len(claimed)}: {len(result.sent)} sent, "
            f"{len(result.partial)} partial, {len(result.retry)} retry, "
            f"{len(result.failed)} failed, {len(result.suppressed)} suppressed, "
            f"{len(result.skipped)} released, "
            f"{len(result.lease_lost)} lost to another worker "
            f"({time.monotonic() - started:.2f}s)."
        )
        return result.handled

    def _remaining(self) -> int | None:
        if self.max_messages is None:
            return None
        return max(self.max_messages - self.stats.handled, 0)

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stopping and time.monotonic() < deadline:
            time.sleep(min(0.1, seconds))

    def _say(self, line: str) -> None:
        if self.stdout is not None:
            self.stdout.write(line + "\n")
            self.stdout.flush()
