"""
A message sent in many transactions outlives its claim's lease: the worker
renews the lease between transactions, so a second worker never reclaims
it part way and no recipient gets the message twice.
"""

import threading
import time

import pytest
from django.db import connection
from django.test import override_settings

from django_mailkit import send_mail
from django_mailkit.models import OutboxMessage, Status
from django_mailkit.worker import Worker
from tests.mailers import outbox_via_smtp

from .rawsmtp import RawSMTP

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def server():
    # Five transactions of one recipient each, 0.4 s apiece: twice the lease.
    server = RawSMTP(rcpt_delay=0.4)
    with override_settings(
        MAILERS=outbox_via_smtp(server, timeout=5, max_recipients_per_transaction=1),
        MAILKIT={"USE_TASKS": False, "LEASE_SECONDS": 1},
    ):
        yield server
    server.close()


RECIPIENTS = [f"u{i}@example.com" for i in range(5)]


def test_a_long_chunked_send_keeps_its_lease(server):
    send_mail("s", "b", "from@example.com", RECIPIENTS)

    def first_worker():
        Worker(once=True, name="A").run()
        connection.close()

    thread = threading.Thread(target=first_worker)
    thread.start()
    # Past the first lease: a second worker looks for expired leases.
    time.sleep(1.3)
    stats = Worker(once=True, name="B").run()
    thread.join()
    assert stats.handled == 0
    received = [line for recipients, _ in server.deliveries for line in recipients]
    assert len(received) == len(set(received)) == len(RECIPIENTS)
    assert OutboxMessage.objects.get().status == Status.SENT


def test_a_lost_lease_stops_the_next_transaction(server):
    send_mail("s", "b", "from@example.com", RECIPIENTS)
    record = OutboxMessage.objects.get()

    def reclaim():
        # Another worker's recovery takes the message over part way.
        time.sleep(0.6)
        OutboxMessage.objects.filter(pk=record.pk).update(claim_token=10**6)
        connection.close()

    thread = threading.Thread(target=reclaim)
    thread.start()
    Worker(once=True, name="A").run()
    thread.join()
    # The transaction under way when the lease was lost went; no more.
    assert 1 <= len(server.deliveries) < len(RECIPIENTS)
