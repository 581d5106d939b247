"""
The test email: build it, send it with one mailer, and say what happened.

``manage.py sendtestemail`` and the admin's "Send test email" page both use
this module, so they send the same message and describe a result, or an
error, in the same words. Through an outbox mailer the message is queued;
the result then names the outbox message and its status, and when that
delivery already failed, it is an error carrying the server's reply.
"""

from __future__ import annotations

import smtplib
import socket
from dataclasses import dataclass, field
from typing import Any

from django.utils import timezone

from .exceptions import InvalidMailer
from .handler import mailers
from .message import EmailMessage, make_msgid, to_address
from .smtp_session import decode_reply

__all__ = ["TestEmailResult", "build_test_email", "describe_error", "send_test_email"]

#: The body of every test email (Django's ``sendtestemail`` says the same).
BODY = "If you're reading this, it was successful."


def build_test_email(recipients: list[Any]) -> EmailMessage:
    """Return the test email to ``recipients``, with a Message-ID of its own."""
    return EmailMessage(
        subject=f"Test email from {socket.gethostname()} on {timezone.now()}",
        body=BODY,
        to=list(recipients),
        headers={"Message-ID": make_msgid()},
    )


def describe_error(exc: BaseException) -> str:
    """Say in one line why sending failed, with the SMTP code and reply."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return "the server refused every recipient: " + "; ".join(
            f"{address}: {code} {one_line(reply)}"
            for address, (code, reply) in exc.recipients.items()
        )
    if isinstance(exc, smtplib.SMTPResponseException):
        return f"the server answered {exc.smtp_code} {one_line(exc.smtp_error)}"
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return f"the server closed the connection ({exc or 'no reason given'})"
    if isinstance(exc, socket.timeout | TimeoutError):
        return "the server did not answer in time"
    if isinstance(exc, OSError) and exc.strerror:
        return f"could not connect: {exc.strerror}"
    return f"{type(exc).__name__}: {exc}"


def one_line(reply: bytes | str) -> str:
    """An SMTP reply (any bytes, maybe multi-line) as one line of text."""
    return " ".join(decode_reply(reply).split())


@dataclass(frozen=True)
class TestEmailResult:
    """What happened to a test email."""

    __test__ = False  # not a test class, despite the name

    using: str
    recipients: list[str]
    #: Why nothing was sent (one line), or "".
    error: str = ""
    #: The mailer is misconfigured: ``error`` is the configuration error.
    misconfigured: bool = False
    #: {address: (code, reply)} for recipients the server refused.
    refused: dict[str, tuple[int, str]] = field(default_factory=dict)
    #: The outbox message it was queued as, when the mailer is an outbox.
    outbox_id: int | None = None
    #: That message's status (a ``Status`` value) and label, after queueing.
    outbox_status: str = ""
    outbox_status_label: str = ""
    #: That message's last error, when its delivery failed.
    outbox_error: str = ""

    @property
    def retrying(self) -> bool:
        """Queued in the outbox after a failed first attempt."""
        return self.outbox_status == "queued" and bool(self.outbox_error)

    @property
    def failed(self) -> bool:
        """
        Nothing reached the server: an error, not a success.

        A first attempt that failed and waits for a retry counts too: a test
        email is there to show that the configuration works, and it doesn't.
        """
        return bool(self.error) or self.outbox_status == "failed" or self.retrying

    @property
    def partly_failed(self) -> bool:
        return bool(self.refused) or self.outbox_status == "partial"

    @property
    def accepted(self) -> list[str]:
        """The recipients the server did not refuse (as given)."""
        return [
            address
            for address in self.recipients
            if _addr_spec(address) not in self.refused
        ]

    def describe(self) -> str:
        """One sentence (or two) saying what happened."""
        alias = self.using
        if self.error:
            if self.misconfigured:
                return f"Mailer {alias!r} is misconfigured: {self.error}"
            return f"Sending with mailer {alias!r} failed: {self.error}"
        if self.outbox_id is not None:
            text = (
                f"Queued as message {self.outbox_id}; status: "
                f"{self.outbox_status_label}."
            )
            if self.retrying:
                text += (
                    f" The first attempt failed, and it will be retried: "
                    f"{self.outbox_error}"
                )
            elif self.outbox_error:
                text += f" {self.outbox_error}"
            elif self.outbox_status == "queued":
                text += (
                    " It is delivered by the task backend or by a running "
                    "mailkit_worker."
                )
            return text
        if self.refused:
            count = len(self.refused)
            return (
                f"Sent a test email with mailer {alias!r}, but the server refused "
                f"{count} recipient{'s' if count != 1 else ''}: "
                + "; ".join(
                    f"{address}: {code} {reply}"
                    for address, (code, reply) in self.refused.items()
                )
                + "."
            )
        return (
            f"Sent a test email with mailer {alias!r} to {', '.join(self.recipients)}."
        )


def _addr_spec(address: str) -> str:
    try:
        return to_address(address, field="to").addr_spec
    except Exception:  # shown as given; the backend already validated it
        return address


def send_test_email(recipients: list[Any], *, using: str) -> TestEmailResult:
    """
    Send a test email to ``recipients`` with mailer ``using``, now.

    Never raises for a delivery problem or a misconfigured mailer: the
    result says what went wrong. Through an outbox mailer, the result names
    the queued message and its status once the queueing transaction (and,
    without a task backend, the delivery) is done.
    """
    from .backends.outbox import EmailBackend as OutboxBackend

    recipients = [str(address) for address in recipients]
    message = build_test_email(recipients)
    try:
        backend = mailers[using]
        sent = backend.send_messages([message])
    except InvalidMailer as exc:
        return TestEmailResult(using, recipients, error=str(exc), misconfigured=True)
    except (OSError, ValueError) as exc:
        return TestEmailResult(using, recipients, error=describe_error(exc))
    if not sent:
        return TestEmailResult(
            using, recipients, error="the mailer did not send the test email"
        )
    if isinstance(backend, OutboxBackend):
        queued = _queued(message)
        if queued is not None:
            return TestEmailResult(
                using,
                recipients,
                outbox_id=queued.pk,
                outbox_status=queued.status,
                outbox_status_label=str(queued.get_status_display()),
                outbox_error=queued.last_error if queued.status != "sent" else "",
            )
    refused = {
        address: (code, one_line(reply))
        for address, (code, reply) in (
            getattr(message, "refused_recipients", None) or {}
        ).items()
    }
    return TestEmailResult(using, recipients, refused=refused)


def _queued(message: EmailMessage) -> Any:
    from .models import OutboxMessage

    outbox_id = getattr(message, "outbox_id", None)
    queryset = OutboxMessage.objects.only("pk", "status", "last_error")
    if outbox_id is not None:
        return queryset.filter(pk=outbox_id).first()
    return (
        queryset.filter(message_id=message.extra_headers["Message-ID"])
        .order_by("-pk")
        .first()
    )
