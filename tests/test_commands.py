"""
Operator input to mailkit_worker and mailkit_outbox, and what they print.

Every bad value is one line (CommandError) naming the option, from the shell
and from call_command(); nothing starts, loops or hits the database with it.
Stored text reaches the terminal with its control characters escaped.
"""

import io
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings
from django.utils import timezone

from django_mailkit.management.options import printable
from django_mailkit.models import (
    Attempt,
    OutboxMessage,
    Recipient,
    RecipientStatus,
    Status,
)

ROOT = Path(__file__).resolve().parent.parent
OUTBOX = "django_mailkit.backends.outbox.EmailBackend"
LOCMEM = "django_mailkit.backends.locmem.EmailBackend"

MAILERS = {
    "default": {"BACKEND": OUTBOX, "OPTIONS": {"deliver_using": "transport"}},
    "transport": {"BACKEND": LOCMEM},
    "other": {"BACKEND": LOCMEM},
}


@pytest.fixture(autouse=True)
def mailers_with_an_outbox():
    with override_settings(MAILERS=MAILERS, MAILKIT={"USE_TASKS": False}):
        yield


def worker(*args):
    """Run mailkit_worker --once; fail if it takes long (no busy loop)."""
    started = time.monotonic()
    try:
        call_command("mailkit_worker", "--once", *args, stdout=io.StringIO())
    finally:
        assert time.monotonic() - started < 5


class TestWorkerOptions:
    @pytest.mark.parametrize(
        "value", ["-1", "nan", "inf", "-inf", "1e300", "soon", "86401"]
    )
    def test_interval(self, value):
        with pytest.raises(
            CommandError,
            match=rf"^--interval must be a number of seconds from 0 to 86400; "
            rf"got '{value}'\.$",
        ):
            worker(f"--interval={value}")

    @pytest.mark.parametrize("value", ["-1", "0", "1.5", "x", "10001", "9" * 30])
    def test_batch_size(self, value):
        with pytest.raises(
            CommandError,
            match=rf"^--batch-size must be a whole number from 1 to 10000; "
            rf"got '{value}'\.$",
        ):
            worker("--batch-size", value)

    @pytest.mark.parametrize("value", ["-1", "0", "many"])
    def test_max_messages(self, value):
        with pytest.raises(CommandError, match=r"^--max-messages must be a whole"):
            worker("--max-messages", value)

    @pytest.mark.parametrize("value", ["-1", "0", "257", "2.5", "all"])
    def test_processes(self, value):
        with pytest.raises(
            CommandError, match=r"^--processes must be a whole number from 1 to 256"
        ):
            worker("--processes", value)

    def test_values_from_python_are_checked_too(self):
        with pytest.raises(CommandError, match=r"^--interval .* got nan\.$"):
            call_command("mailkit_worker", once=True, interval=float("nan"))
        with pytest.raises(CommandError, match=r"^--batch-size .* got -1\.$"):
            call_command("mailkit_worker", once=True, batch_size=-1)
        with pytest.raises(CommandError, match=r"^--batch-size .* got True\.$"):
            call_command("mailkit_worker", once=True, batch_size=True)

    def test_unknown_mailer_lists_the_configured_ones(self):
        with pytest.raises(
            CommandError,
            match=r"^--using: there is no mailer 'nosuch'\. "
            r"Configured mailers: default, transport, other\.$",
        ):
            worker("--using", "nosuch")

    def test_an_outbox_alias_names_the_mailer_that_delivers(self):
        with pytest.raises(
            CommandError,
            match=r"^--using: mailer 'default' is an outbox; the worker delivers "
            r"its messages with mailer 'transport' \(--using transport\)\.$",
        ):
            worker("--using", "default")

    @pytest.mark.django_db(transaction=True)
    def test_good_values_run(self):
        worker("--interval", "0", "--batch-size", "10000", "--using", "transport")
        worker("--interval", "0.5", "--max-messages", "1", "--batch-size", " 7 ")


def make_message(**fields):
    values = {
        "queued_via": "default",
        "mailer": "transport",
        "from_email": "from@example.com",
        "recipients": ["a@example.com"],
        "subject": "hello",
        "mime": b"Subject: hello\r\n\r\nbody\r\n",
        "message_id": "<1@example.com>",
        "status": Status.QUEUED,
        "next_attempt_at": timezone.now(),
        **fields,
    }
    return OutboxMessage.objects.create(**values)


@pytest.mark.django_db(transaction=True)
class TestOutboxOptions:
    @pytest.mark.parametrize("value", ["-1", "0", "ten", "1000001", "9" * 30])
    def test_list_limit(self, value):
        with pytest.raises(
            CommandError,
            match=rf"^--limit must be a whole number from 1 to 1000000; "
            rf"got '{value}'\.$",
        ):
            call_command("mailkit_outbox", "list", "--limit", value)

    @pytest.mark.parametrize("value", ["-1", "99999999999", "36501", "1e3", "old"])
    def test_purge_older_than(self, value):
        make_message(status=Status.SENT)
        with pytest.raises(
            CommandError,
            match=rf"^--older-than must be a whole number from 0 to 36500; "
            rf"got '{value}'\.$",
        ):
            call_command("mailkit_outbox", "purge", "--older-than", value)
        assert OutboxMessage.objects.count() == 1

    def test_purge_at_the_limits(self):
        make_message(status=Status.SENT)
        out = io.StringIO()
        call_command("mailkit_outbox", "purge", "--older-than", "36500", stdout=out)
        assert "Deleted 0 message(s)" in out.getvalue()
        call_command("mailkit_outbox", "purge", "--older-than", "0", stdout=out)
        assert OutboxMessage.objects.count() == 0

    def test_purge_default_from_a_bad_setting(self):
        with override_settings(MAILKIT={"RETENTION_DAYS": 10**12}):
            with pytest.raises(CommandError, match=r"RETENTION_DAYS'\] must be"):
                call_command("mailkit_outbox", "purge")

    @pytest.mark.parametrize("action", ["show", "requeue", "cancel"])
    @pytest.mark.parametrize("value", ["-1", "0", "x", "9" * 30])
    def test_message_ids(self, action, value):
        with pytest.raises(
            CommandError, match=r"^A message id must be a whole number from 1 to "
        ):
            call_command("mailkit_outbox", action, value)

    @pytest.mark.parametrize("action", ["list", "requeue"])
    def test_unknown_mailer_lists_the_configured_ones(self, action):
        args = ["--all-failed"] if action == "requeue" else []
        with pytest.raises(
            CommandError,
            match=r"^--using: there is no mailer 'nosuch'\. "
            r"Configured mailers: default, transport, other\.$",
        ):
            call_command("mailkit_outbox", action, "--using", "nosuch", *args)

    def test_a_removed_mailer_still_on_record_can_be_listed(self):
        make_message(mailer="retired", subject="from the old mailer")
        out = io.StringIO()
        call_command("mailkit_outbox", "list", "--using", "retired", stdout=out)
        assert "from the old mailer" in out.getvalue()


HOSTILE = "\x1b[2J\x1b]0;pwned\x07Invoice\rPAID\nFake line\u202etxt.exe\x9b31m"


@pytest.mark.django_db(transaction=True)
def test_show_says_a_message_was_recovered_from_a_dead_worker():
    message = make_message()
    out = io.StringIO()
    call_command("mailkit_outbox", "show", str(message.pk), stdout=out)
    assert "Recovered" not in out.getvalue()
    OutboxMessage.objects.claim("w", limit=1, lease=timedelta(seconds=1))
    later = timezone.now() + timedelta(seconds=2)
    assert OutboxMessage.objects.recover_expired(later) == 1
    call_command("mailkit_outbox", "show", str(message.pk), stdout=out)
    assert (
        "  Recovered:  1 time(s) from a worker that stopped (died, or stalled "
        "past its lease) while it held the message\n" in out.getvalue()
    )


@pytest.mark.django_db(transaction=True)
def test_show_lists_an_interrupted_attempt():
    message = make_message()
    (claimed,) = OutboxMessage.objects.claim("w", limit=1, lease=timedelta(seconds=1))
    assert claimed.begin_attempt(timedelta(seconds=1)) is True
    later = timezone.now() + timedelta(seconds=2)
    assert OutboxMessage.objects.recover_expired(later) == 1
    out = io.StringIO()
    call_command("mailkit_outbox", "show", str(message.pk), stdout=out)
    (line,) = [x for x in out.getvalue().splitlines() if x.startswith("    #1 ")]
    assert " interrupted (Interrupted: its worker stopped (died, or stalled " in line


@pytest.mark.django_db(transaction=True)
class TestTerminalOutput:
    def test_printable(self):
        assert printable("plain ünïcødé 📨") == "plain ünïcødé 📨"
        assert printable(HOSTILE) == (
            "\\x1b[2J\\x1b]0;pwned\\x07Invoice\\x0dPAID\\x0aFake line"
            "\\u202etxt.exe\\x9b31m"
        )

    def hostile_message(self):
        message = make_message(
            subject=HOSTILE,
            mailer="transport",
            from_email=f"evil{HOSTILE}@example.com",
            message_id=f"<{HOSTILE}>",
            recipients=[f"a{HOSTILE}@example.com"],
            status=Status.FAILED,
            last_error=HOSTILE,
            attempts=1,
        )
        Recipient.objects.create(
            message=message,
            address=f"a{HOSTILE}@example.com",
            status=RecipientStatus.FAILED,
            smtp_code=550,
            smtp_reply=HOSTILE,
        )
        Attempt.objects.create(
            message=message,
            number=1,
            started_at=timezone.now(),
            finished_at=timezone.now(),
            outcome="failed",
            smtp_code=550,
            smtp_reply=HOSTILE,
            error=HOSTILE,
            worker="w",
        )
        return message

    @pytest.mark.parametrize("action", ["list", "show"])
    def test_control_characters_are_escaped(self, action):
        message = self.hostile_message()
        out = io.StringIO()
        args = [str(message.pk)] if action == "show" else []
        call_command("mailkit_outbox", action, *args, stdout=out)
        text = out.getvalue()
        for char in "\x1b\x07\r\x9b\u202e":
            assert char not in text
        assert "\\x1b[2J" in text and "\\u202etxt.exe" in text
        if action == "list":
            assert text.count("\n") == 1  # one row, one line
        else:
            # Every line is one the command wrote, none from the data.
            assert all(
                line.startswith(("Message ", "  ")) for line in text.splitlines()
            ), text

    def test_a_recipients_field_that_is_not_a_list(self):
        make_message(recipients="abc@example.com", subject="odd row")
        out = io.StringIO()
        call_command("mailkit_outbox", "list", stdout=out)
        assert "odd row" in out.getvalue()


@pytest.mark.parametrize(
    "command, expected",
    [
        (
            ["mailkit_worker", "--interval", "-1"],
            "CommandError: --interval must be a number of seconds from 0 to "
            "86400; got '-1'.",
        ),
        (
            ["mailkit_outbox", "list", "--limit", "-1"],
            "CommandError: --limit must be a whole number from 1 to 1000000; got '-1'.",
        ),
    ],
)
def test_from_the_shell_one_line_and_a_non_zero_exit(command, expected):
    done = subprocess.run(
        [sys.executable, "-m", "django", *command],
        cwd=ROOT,
        env={
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "DJANGO_SETTINGS_MODULE": "tests.worker_settings",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    # The system checks may warn first (W003 on older Django); then one line.
    assert done.stderr.strip().splitlines()[-1] == expected
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


@pytest.mark.django_db
def test_functions_elsewhere_than_postgresql_has_nothing_to_do():
    # PostgreSQL's listing and dropping: tests/test_outbox_record_function.py.
    from django.db import connection

    if connection.vendor == "postgresql":
        pytest.skip("the other databases")
    out = io.StringIO()
    call_command("mailkit_outbox", "functions", "--drop-old", stdout=out)
    assert out.getvalue() == (
        "Record functions are installed on PostgreSQL only; the outbox's "
        f"database 'default' is {connection.vendor}: nothing to do.\n"
    )
