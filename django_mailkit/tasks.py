"""
Task entry points for Django's Tasks framework.

``django.tasks`` on Django 6.0+, the ``django-tasks`` backport on 5.2 when
installed. A task takes only outbox primary keys (those of up to
``MAILKIT['TASK_BATCH_SIZE']`` messages committed together): the messages
themselves stay in the database. On a task worker, a task that has work also
takes other due messages, up to that many in all (``deliver_message``).
Import this module lazily (the outbox backend does, at commit time), never
from models or the package root.

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

import importlib
import logging
import os
import socket
import uuid
from collections.abc import Iterable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from . import conf

if TYPE_CHECKING:
    from .delivery import BatchResult

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


def deliver_message(outbox_id: int, *more_ids: int) -> str:
    """
    Deliver the outbox message ``outbox_id`` (and ``more_ids``) if due.

    Returns what became of ``outbox_id``: "sent", "partial", "retry",
    "failed", "suppressed", "skipped" (given back to the queue untried,
    its mailer's limits wouldn't let it go in time), "lease_lost", or "not
    due" (already sent, cancelled, not due yet, or being delivered by
    someone else: nothing was done).

    The messages are claimed like a worker claims them, so a task and
    ``mailkit_worker`` (or two tasks) never both send one: each claim is
    fenced. When the task runs on a task worker (any backend but the
    immediate one) and it got a message to deliver, it also takes other due
    messages, in the worker's claim order (priority first), up to
    ``MAILKIT['TASK_BATCH_SIZE']`` in all, and delivers them in the same
    run, on the same connections. Their own tasks then find nothing to do
    and return "not due" at the cost of one query. One task run delivering
    twenty messages costs little more than one delivering one: the task
    queue's own work per job, the claim, the SMTP connection and the writes
    are shared.
    """
    from .delivery import deliver_batch
    from .models import OutboxMessage

    name = worker_name("task")
    lease = timedelta(seconds=conf.lease_seconds())
    ids = [outbox_id, *more_ids]
    claimed = OutboxMessage.objects.claim(name, limit=len(ids), lease=lease, ids=ids)
    if not claimed:
        return "not due"  # sent, cancelled, not due yet, or claimed elsewhere
    room = conf.task_batch_size() - len(claimed)
    if room > 0 and _on_a_task_worker():
        claimed += OutboxMessage.objects.claim(name, limit=room, lease=lease)
    result = deliver_batch(claimed, worker=name, lease=lease)
    # A message this run took from another task may be past its own task:
    # each one to retry gets its next task here.
    for retry_id in result.retry:
        _schedule_retry(retry_id)
    return _outcome(result, outbox_id)


def _outcome(result: BatchResult, outbox_id: int) -> str:
    kind = result.of(outbox_id)
    if kind is None:
        return "not due"  # one of ``more_ids`` was due, ``outbox_id`` wasn't
    # The names this function has always returned.
    return {"lease lost": "lease_lost", "released": "skipped"}.get(
        kind.value, kind.value
    )


def _on_a_task_worker() -> bool:
    """
    Whether delivery tasks run on task workers, not in the process that
    enqueues them: the immediate backend runs a task inside the request
    that committed the message, which must not deliver others' mail too.
    """
    if task is None:
        return False
    try:
        backend = task_backends[conf.task_backend()]
    except Exception:
        return False
    return not isinstance(backend, _immediate_backends())


def _immediate_backends() -> tuple[type, ...]:
    kinds: list[type] = []
    for module in (
        "django.tasks.backends.immediate",
        "django_tasks.backends.immediate",
    ):
        try:
            kinds.append(importlib.import_module(module).ImmediateBackend)
        except (ImportError, AttributeError):
            pass
    return tuple(kinds)


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
    from django.db import router

    from .models import OutboxMessage

    if task is None or not _backend_supports_defer():
        return  # mailkit_worker picks it up when it is due.
    # The primary, never a replica that may not have the retry's due time yet.
    due = (
        OutboxMessage.objects.using(router.db_for_write(OutboxMessage))
        .filter(pk=outbox_id)
        .values_list("next_attempt_at", flat=True)
        .first()
    )
    if due is not None:
        _delivery_task().using(run_after=due).enqueue(outbox_id)


def enqueue_delivery(outbox_ids: Iterable[int]) -> None:
    """
    Start delivering newly committed outbox messages.

    With the Tasks framework, the messages go to ``MAILKIT['TASK_BACKEND']``
    in tasks of up to ``MAILKIT['TASK_BATCH_SIZE']`` messages each (with the
    default immediate backend that means delivery right now, synchronously).
    Without it, the messages are delivered right now, the same way.
    ``MAILKIT['USE_TASKS'] = False`` leaves everything to ``mailkit_worker``.
    A failure here never loses a message: it stays queued for the worker.
    """
    if not conf.use_tasks():
        return
    ids = list(outbox_ids)
    size = conf.task_batch_size()
    for start in range(0, len(ids), size):
        chunk = ids[start : start + size]
        try:
            if task is None:
                deliver_message_now(*chunk)
            else:
                _delivery_task().enqueue(*chunk)
        except Exception:
            logger.exception(
                "Could not start delivering outbox message(s) %s; they stay "
                "queued for mailkit_worker.",
                ", ".join(map(str, chunk)),
            )
