"""
Task entry points for Django's Tasks framework.

``django.tasks`` on Django 6.0+, the ``django-tasks`` backport on 5.2 when
installed. A task takes only an outbox primary key: the message itself stays
in the database. Import this module lazily (the outbox backend does, at
commit time), never from models or the package root.

``deliver_message`` is the Task itself: a queueing backend stores the task's
module path (``django_mailkit.tasks.deliver_message``) and its workers import
that path back, so it must name the Task, not the function behind it. The
plain function is ``deliver_message_now``.

Failures retry through the outbox, not through the task backend: the task
records the attempt and its outcome on the message, and a message that is to
be retried gets a new task at its due time when the backend can defer
(``supports_defer``); otherwise ``mailkit_worker`` picks it up when it is
due. A task that dies (its worker killed, the database gone) leaves the
message claimed; when the claim's lease runs out, ``mailkit_worker`` takes
it over. The task backend's own retry mechanisms, if it has any, are never
needed, and a lost task never loses a message.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from . import conf

logger = logging.getLogger("django_mailkit.tasks")

try:
    from django.tasks import task, task_backends
except ImportError:  # Django < 6.0
    # Typed against django.tasks (django-stubs); the backport has the same API.
    try:
        from django_tasks import (  # type: ignore[assignment,no-redef]
            task,
            task_backends,
        )
    except ImportError:
        task = task_backends = None  # type: ignore[assignment]


def worker_name(kind: str) -> str:
    """Return a name for one claimant: host, process and a random suffix."""
    return f"{kind}:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def deliver_message(outbox_id: int) -> str:
    """
    Deliver the outbox message ``outbox_id`` if it is due; return the outcome.

    The message is claimed like a worker claims it, so a task and
    ``mailkit_worker`` (or two copies of one task) never both send it.
    """
    from .delivery import deliver_batch
    from .models import OutboxMessage

    name = worker_name("task")
    lease = timedelta(seconds=conf.lease_seconds())
    claimed = OutboxMessage.objects.claim(name, limit=1, lease=lease, ids=[outbox_id])
    if not claimed:
        return "not due"  # sent, cancelled, not due yet, or claimed elsewhere
    result = deliver_batch(claimed, worker=name, lease=lease)
    if result.retry:
        _schedule_retry(outbox_id)
    return next(
        kind
        for kind in ("sent", "partial", "retry", "failed", "skipped", "lease_lost")
        if getattr(result, kind)
    )


#: The plain function: delivers right now, in this process.
deliver_message_now = deliver_message


def _make_task() -> Any:
    """Wrap ``deliver_message`` in a Task, or return None if that can't be done."""
    if task is None:
        return None
    try:
        return task(deliver_message_now, backend=conf.task_backend())
    except Exception:
        # A TASKS setting that can't be used must not stop mailkit_worker,
        # which imports this module: delivery then waits for the worker.
        logger.exception(
            "Could not create the delivery task for TASKS[%r]; queued messages "
            "wait for mailkit_worker.",
            conf.task_backend(),
        )
        return None


#: The delivery Task, under the name its module path points to. Without the
#: Tasks framework (or when it can't be used), the plain function.
deliver_message_task: Any = _make_task()
if deliver_message_task is not None:
    deliver_message = deliver_message_task


def _backend_supports_defer() -> bool:
    try:
        return bool(task_backends[conf.task_backend()].supports_defer)
    except Exception:
        return False


def _delivery_task() -> Any:
    if deliver_message_task is None:
        raise RuntimeError(
            "The delivery task could not be created (the error was logged "
            "when django_mailkit.tasks was imported)."
        )
    return deliver_message_task.using(backend=conf.task_backend())


def _schedule_retry(outbox_id: int) -> None:
    """Enqueue the next attempt at its due time, if the task backend can."""
    from .models import OutboxMessage

    if task is None or not _backend_supports_defer():
        return  # mailkit_worker picks it up when it is due.
    due = (
        OutboxMessage.objects.filter(pk=outbox_id)
        .values_list("next_attempt_at", flat=True)
        .first()
    )
    if due is not None:
        _delivery_task().using(run_after=due).enqueue(outbox_id)


def enqueue_delivery(outbox_ids: Iterable[int]) -> None:
    """
    Start delivering newly committed outbox messages.

    With the Tasks framework, one task per message goes to
    ``MAILKIT['TASK_BACKEND']`` (with the default immediate backend that
    means delivery right now, synchronously). Without it, the messages are
    delivered right now, the same way. ``MAILKIT['USE_TASKS'] = False``
    leaves everything to ``mailkit_worker``. A failure here never loses a
    message: it stays queued for the worker.
    """
    if not conf.use_tasks():
        return
    for outbox_id in outbox_ids:
        try:
            if task is None:
                deliver_message_now(outbox_id)
            else:
                _delivery_task().enqueue(outbox_id)
        except Exception:
            logger.exception(
                "Could not start delivering outbox message %s; it stays "
                "queued for mailkit_worker.",
                outbox_id,
            )
