"""The outbox's operator state changes: requeue, cancel, resend (model and queryset)."""

import pytest
from django.core import mail
from django.db import transaction

from django_mailkit import send_mail, tasks
from django_mailkit.exceptions import InvalidStoredMessage
from django_mailkit.models import (
    OutboxMessage,
    Recipient,
    RecipientStatus,
    Status,
    enqueue_delivery_on_commit,
    resend_messages,
)

from .test_outbox import ScriptedBackend, drain, outbox_settings

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def queue_only():
    mail.outbox = []
    ScriptedBackend.script = []
    ScriptedBackend.delivered = []
    with outbox_settings(
        use_tasks=False, transport="tests.test_outbox.ScriptedBackend"
    ):
        yield


@pytest.fixture
def with_tasks(monkeypatch):
    """
    Delivery starts on commit (immediate tasks, or synchronously); yields
    the ids handed to the Tasks framework, one list per commit.
    """
    mail.outbox = []
    ScriptedBackend.script = []
    ScriptedBackend.delivered = []
    calls = []
    real = tasks.enqueue_delivery

    def enqueue_delivery(ids):
        calls.append(list(ids))
        real(ids)

    monkeypatch.setattr(tasks, "enqueue_delivery", enqueue_delivery)
    with outbox_settings(use_tasks=True, transport="tests.test_outbox.ScriptedBackend"):
        yield calls


def queue(count, prefix="m", to=("a@example.com",)):
    for i in range(count):
        send_mail(f"{prefix}{i}", "body", None, list(to))
    return list(OutboxMessage.objects.filter(subject__startswith=prefix).order_by("pk"))


def finish_as(records, status, recipient_status):
    ids = [r.pk for r in records]
    OutboxMessage.objects.filter(pk__in=ids).update(status=status, attempts=3)
    Recipient.objects.filter(message_id__in=ids).update(status=recipient_status)


class TestRequeue:
    def test_counts_only_failed_and_partial(self, queue_only):
        failed, partial, sent, queued = queue(4)
        finish_as([failed], Status.FAILED, RecipientStatus.FAILED)
        finish_as([partial], Status.PARTIAL, RecipientStatus.FAILED)
        finish_as([sent], Status.SENT, RecipientStatus.SENT)
        assert OutboxMessage.objects.requeue() == 2
        statuses = dict(OutboxMessage.objects.values_list("pk", "status"))
        assert statuses == {
            failed.pk: Status.QUEUED,
            partial.pk: Status.QUEUED,
            sent.pk: Status.SENT,
            queued.pk: Status.QUEUED,
        }
        requeued = OutboxMessage.objects.get(pk=failed.pk)
        # The budget starts afresh; the history is kept.
        assert (requeued.attempts, requeued.requeued_attempts) == (3, 3)
        assert requeued.recipient_set.get().status == RecipientStatus.PENDING
        # A sent message's recipients are never touched.
        assert sent.recipient_set.get().status == RecipientStatus.SENT

    def test_partial_left_out_when_asked(self, queue_only):
        failed, partial = queue(2)
        finish_as([failed], Status.FAILED, RecipientStatus.FAILED)
        finish_as([partial], Status.PARTIAL, RecipientStatus.FAILED)
        assert OutboxMessage.objects.requeue(include_partial=False) == 1
        partial.refresh_from_db()
        assert partial.status == Status.PARTIAL
        assert partial.recipient_set.get().status == RecipientStatus.FAILED

    def test_partial_resends_only_to_the_failed_recipients(self, queue_only):
        (record,) = queue(1, to=("ok@example.com", "bad@example.com"))
        OutboxMessage.objects.filter(pk=record.pk).update(status=Status.PARTIAL)
        record.recipient_set.filter(address="ok@example.com").update(
            status=RecipientStatus.SENT
        )
        record.recipient_set.filter(address="bad@example.com").update(
            status=RecipientStatus.FAILED
        )
        assert record.requeue() is True
        assert record.status == Status.QUEUED
        assert drain().sent == 1
        (delivered,) = ScriptedBackend.delivered
        assert delivered.recipients() == ["bad@example.com"]

    def test_delivery_is_enqueued_once_on_commit(self, with_tasks):
        ScriptedBackend.script = [RuntimeError("boom")]  # fails for good
        (record,) = queue(1)
        record.refresh_from_db()
        assert record.status == Status.FAILED
        with transaction.atomic():
            assert OutboxMessage.objects.filter(pk=record.pk).requeue() == 1
            assert with_tasks == [[record.pk]]  # the send's, not yet the requeue's
        assert with_tasks == [[record.pk], [record.pk]]
        record.refresh_from_db()
        assert record.status == Status.SENT

    def test_rolled_back_requeue_enqueues_nothing(self, with_tasks):
        ScriptedBackend.script = [RuntimeError("boom")]
        (record,) = queue(1)
        with pytest.raises(RuntimeError, match="rolled back"), transaction.atomic():
            OutboxMessage.objects.requeue()
            raise RuntimeError("rolled back")
        assert with_tasks == [[record.pk]]  # only the original send's
        record.refresh_from_db()
        assert record.status == Status.FAILED

    def test_a_sliced_selection(self, queue_only):
        records = queue(3)
        finish_as(records, Status.FAILED, RecipientStatus.FAILED)
        assert OutboxMessage.objects.order_by("pk")[:2].requeue() == 2
        assert OutboxMessage.objects.failed().get().pk == records[2].pk

    def test_many(self, queue_only):
        records = queue(3)
        finish_as(records, Status.FAILED, RecipientStatus.FAILED)
        ids = [r.pk for r in records]
        # More ids than one chunk's worth (non-existent ones included).
        selection = OutboxMessage.objects.filter(
            pk__in=ids + list(range(10**6, 10**6 + 1200))
        )
        assert selection.requeue() == 3


class TestCancel:
    def test_only_queued(self, queue_only):
        queued, sending, sent = queue(3)
        OutboxMessage.objects.filter(pk=sending.pk).update(status=Status.SENDING)
        OutboxMessage.objects.filter(pk=sent.pk).update(status=Status.SENT)
        assert OutboxMessage.objects.cancel() == 1
        assert OutboxMessage.objects.get(pk=queued.pk).status == Status.CANCELLED
        assert OutboxMessage.objects.get(pk=sending.pk).status == Status.SENDING
        assert OutboxMessage.objects.cancel() == 0
        assert drain().handled == 0

    def test_model_method(self, queue_only):
        (record,) = queue(1)
        assert record.cancel() is True
        assert record.status == Status.CANCELLED
        assert record.cancel() is False


class TestResend:
    def test_a_linked_queued_copy(self, queue_only):
        (original,) = queue(1, to=("a@example.com", "b@example.com"))
        finish_as([original], Status.SENT, RecipientStatus.SENT)
        copy = OutboxMessage.objects.get(pk=original.pk).resend()
        assert copy.pk != original.pk
        assert copy.resent_from_id == original.pk
        assert list(original.resends.all()) == [copy]
        assert copy.status == Status.QUEUED and copy.attempts == 0
        assert bytes(copy.mime) == bytes(original.mime)
        assert copy.message_id == original.message_id
        assert sorted(copy.recipient_set.values_list("address", "status")) == [
            ("a@example.com", RecipientStatus.PENDING),
            ("b@example.com", RecipientStatus.PENDING),
        ]
        assert drain().sent == 1
        original.refresh_from_db()
        assert original.status == Status.SENT  # untouched

    def test_unfinished_messages_are_not_resent(self, queue_only):
        queued, sending, failed = queue(3)
        OutboxMessage.objects.filter(pk=sending.pk).update(status=Status.SENDING)
        finish_as([failed], Status.FAILED, RecipientStatus.FAILED)
        assert OutboxMessage.objects.resend() == 1
        assert OutboxMessage.objects.get(resent_from__isnull=False).resent_from_id == (
            failed.pk
        )
        with pytest.raises(ValueError, match=f"Outbox message {queued.pk} is queued"):
            queued.resend()

    def test_pairs_in_order(self, queue_only):
        records = queue(5)
        finish_as(records, Status.FAILED, RecipientStatus.FAILED)
        pairs = resend_messages(OutboxMessage.objects.all(), chunk_size=2)
        assert [old for old, _new in pairs] == [r.pk for r in records]
        for old, new in pairs:
            assert OutboxMessage.objects.get(pk=new).resent_from_id == old

    def test_original_deleted_keeps_the_copy(self, queue_only):
        (original,) = queue(1)
        finish_as([original], Status.SENT, RecipientStatus.SENT)
        copy = original.resend()
        original.delete()
        copy.refresh_from_db()
        assert copy.resent_from_id is None

    @pytest.mark.parametrize(
        "stored, problem",
        [
            ("a@example.com", "must be a non-empty list of addresses, not str"),
            ([], "must be a non-empty list of addresses, not list"),
            ({"a@example.com": 1}, "not dict"),
            ([["a@example.com"]], "must be an address (a string), not list"),
            (["not an address"], "stored recipient 'not an address' is invalid"),
            (["a@example.com\r\nRCPT TO:<x@evil.example>"], "is invalid"),
        ],
    )
    def test_a_hostile_stored_envelope_fails_clearly(self, queue_only, stored, problem):
        good, bad = queue(2)
        finish_as([good, bad], Status.SENT, RecipientStatus.SENT)
        OutboxMessage.objects.filter(pk=bad.pk).update(recipients=stored)
        with pytest.raises(InvalidStoredMessage) as caught:
            OutboxMessage.objects.resend()
        assert str(caught.value).startswith(f"Outbox message {bad.pk}: ")
        assert problem in str(caught.value)
        # All or nothing: the good one wasn't resent either.
        assert OutboxMessage.objects.count() == 2

    def test_resend_enqueues_on_commit(self, with_tasks):
        (original,) = queue(1)
        ScriptedBackend.delivered = []
        copy = original.resend()
        assert with_tasks == [[original.pk], [copy.pk]]
        copy.refresh_from_db()
        assert copy.status == Status.SENT
        assert len(ScriptedBackend.delivered) == 1


def test_enqueue_on_commit_with_nothing_enqueues_nothing(with_tasks):
    with transaction.atomic():
        enqueue_delivery_on_commit([], using="default")
    assert with_tasks == []
