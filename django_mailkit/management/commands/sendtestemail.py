"""``manage.py sendtestemail``: check that a mailer really delivers."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ... import conf
from ...handler import DEFAULT_MAILER_ALIAS
from ...testemail import send_test_email


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
        result = send_test_email(recipients, using=alias)
        if result.misconfigured:
            raise CommandError(result.error)
        if result.error:
            raise CommandError(result.describe())
        if result.outbox_id is not None:
            if result.failed:
                raise CommandError(result.describe())
            self.stdout.write(result.describe())
            return
        self.stdout.write(
            f"Sent a test email with mailer {alias!r} to {', '.join(result.accepted)}."
        )
        for address, (code, reply) in result.refused.items():
            self.stderr.write(f"Refused {address}: {code} {reply}")
        if result.refused:
            raise CommandError(
                f"{len(result.refused)} of {len(recipients)} recipients were refused."
            )
