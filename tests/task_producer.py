"""
The application side of tests/test_task_backends.py, run as a process:

    python -m tests.task_producer send COMMITTED ROLLED_BACK
    python -m tests.task_producer lose-tasks
    python -m tests.task_producer statuses
    python -m tests.task_producer runs

``send`` sends COMMITTED messages, each inside its own
``transaction.atomic()`` that commits, and ROLLED_BACK messages inside
blocks that roll back, interleaved; it prints the Message-IDs of both as
JSON. ``lose-tasks`` throws the queued tasks away (deletes django-tasks-db's
rows, or empties the Redis database). ``statuses`` prints the outbox's
message count per status. ``runs`` prints how many attempts were made, and
by how many claimants (each task run claims under a name of its own).
"""

import json
import os
import sys

import django


def send(committed: int, rolled_back: int) -> dict[str, list[str]]:
    from django.core.mail.message import make_msgid
    from django.db import transaction

    from django_mailkit import EmailMessage

    class Abort(Exception):
        pass

    ids: dict[str, list[str]] = {"committed": [], "rolled_back": []}
    # Interleaved: every fourth message is rolled back, while there are any.
    order: list[str] = []
    c, r = committed, rolled_back
    while c or r:
        if r and (not c or len(order) % 4 == 3):
            order.append("rolled_back")
            r -= 1
        else:
            order.append("committed")
            c -= 1
    for n, kind in enumerate(order):
        message_id = make_msgid(domain="tasks.mailkit.test")
        message = EmailMessage(
            f"{kind} {n}",
            "body",
            "from@example.com",
            [f"u{n}@example.com"],
            headers={"Message-ID": message_id},
        )
        try:
            with transaction.atomic():
                message.send()
                if kind == "rolled_back":
                    raise Abort
        except Abort:
            pass
        ids[kind].append(message_id)
    return ids


def lose_tasks() -> None:
    from django.conf import settings

    if "django_tasks_db" in settings.INSTALLED_APPS:
        from django_tasks_db.models import DBTaskResult

        DBTaskResult.objects.all().delete()
    else:
        import django_rq

        django_rq.get_connection("default").flushdb()


def statuses() -> dict[str, int]:
    from django.db.models import Count

    from django_mailkit.models import OutboxMessage

    return dict(
        OutboxMessage.objects.values_list("status").annotate(n=Count("id")).order_by()
    )


def runs() -> dict[str, int]:
    from django_mailkit.models import Attempt

    return {
        "attempts": Attempt.objects.count(),
        "runs": Attempt.objects.values("worker").distinct().count(),
    }


def main(argv: list[str]) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.task_settings")
    django.setup()
    action = argv[0]
    if action == "send":
        result: object = send(int(argv[1]), int(argv[2]))
    elif action == "lose-tasks":
        result = lose_tasks()
    elif action == "statuses":
        result = statuses()
    elif action == "runs":
        result = runs()
    else:
        raise SystemExit(f"unknown action {action!r}")
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
