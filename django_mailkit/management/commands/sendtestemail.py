"""``manage.py sendtestemail``: check that a mailer really delivers."""

from __future__ import annotations

import smtplib
import socket
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from ... import conf
from ...exceptions import InvalidMailer
from ...handler import DEFAULT_MAILER_ALIAS, mailers
from ...message import EmailMessage, to_address


def describe_error(exc: BaseException) -> str:
    """Say in one line why sending failed, with the SMTP code and reply."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return "the server refused every recipient: " + "; ".join(
            f"{address}: {code} {_text(reply)}"
            for address, (code, reply) in exc.recipients.items()
        )
    if isinstance(exc, smtplib.SMTPResponseException):
        return f"the server answered {exc.smtp_code} {_text(exc.smtp_error)}"
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return f"the server closed the connection ({exc or 'no reason given'})"
    if isinstance(exc, socket.timeout | TimeoutError):
        return "the server did not answer in time"
    if isinstance(exc, OSError) and exc.strerror:
        return f"could not connect: {exc.strerror}"
    return f"{type(exc).__name__}: {exc}"


def _text(reply: bytes | str) -> str:
    if isinstance(reply, bytes):
        reply = reply.decode("utf-8", "replace")
    return " ".join(reply.split())


class Command(BaseCommand):
    help = "Send a test email to the given addresses, ADMINS or MANAGERS."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "email", nargs="*", help="One or more addresses to send a test email to."
        )
        parser.add_argument(
            "--managers", action="store_true", help="Send to the MANAGERS."
        )
        parser.add_argument("--admins", action="store_true", help="Send to the ADMINS.")
        parser.add_argument(
            "--using",
            default=DEFAULT_MAILER_ALIAS,
            metavar="ALIAS",
            help="The MAILERS alias to send with (default: %(default)s).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        recipients: list[Any] = list(options["email"])
        for flag, setting in (("admins", "ADMINS"), ("managers", "MANAGERS")):
            if options[flag]:
                staff = conf.staff_addresses(setting)
                if not staff:
                    raise CommandError(f"--{flag} was given, but {setting} is empty.")
                recipients.extend(staff)
        if not recipients:
            raise CommandError("Give one or more addresses, or --admins or --managers.")
        alias = options["using"]
        host = socket.gethostname()
        message = EmailMessage(
            subject=f"Test email from {host} on {timezone.now()}",
            body="If you're reading this, it was successful.",
            to=recipients,
        )
        try:
            backend = mailers[alias]
            sent = backend.send_messages([message])
        except InvalidMailer as exc:
            raise CommandError(str(exc)) from exc
        except (OSError, ValueError) as exc:
            raise CommandError(
                f"Sending with mailer {alias!r} failed: {describe_error(exc)}"
            ) from exc
        if not sent:
            raise CommandError(f"Mailer {alias!r} did not send the test email.")
        refused = getattr(message, "refused_recipients", None) or {}
        accepted = [
            str(r)
            for r in recipients
            if to_address(r, field="to").addr_spec not in refused
        ]
        self.stdout.write(
            f"Sent a test email with mailer {alias!r} to {', '.join(accepted)}."
        )
        for address, (code, reply) in refused.items():
            self.stderr.write(f"Refused {address}: {code} {reply}")
        if refused:
            raise CommandError(
                f"{len(refused)} of {len(recipients)} recipients were refused."
            )
