"""``manage.py sendtestemail``, against a real SMTP server."""

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings

from tests.mailers import outbox_via_smtp

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def server(smtp_server_factory):
    server = smtp_server_factory()
    smtp = {
        "BACKEND": "django_mailkit.backends.smtp.EmailBackend",
        "OPTIONS": {"host": server.host, "port": server.port, "timeout": 5},
    }
    with override_settings(
        MAILERS={"default": smtp, "other": smtp},
        ADMINS=["Admin <admin@example.com>"],
        MANAGERS=["manager@example.com"],
    ):
        yield server


def run(*args):
    out, err = io.StringIO(), io.StringIO()
    call_command("sendtestemail", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_sends_to_the_given_addresses(server):
    out, _ = run("ann@example.com", "bob@example.com")
    (delivery,) = server.deliveries
    assert delivery.rcpt_tos == ["ann@example.com", "bob@example.com"]
    assert delivery.message["Subject"].startswith("Test email from ")
    assert (
        "If you're reading this, it was successful." in delivery.message.get_content()
    )
    assert (
        "Sent a test email with mailer 'default' to ann@example.com, bob@example.com"
        in out
    )


def test_admins_managers_and_using(server):
    out, _ = run("--admins", "--managers", "--using", "other")
    (delivery,) = server.deliveries
    assert delivery.rcpt_tos == ["admin@example.com", "manager@example.com"]
    assert "mailer 'other'" in out


def test_it_is_djangos_command_replaced():
    from django.core.management import get_commands

    assert get_commands()["sendtestemail"] == "django_mailkit"


@pytest.mark.parametrize(
    "args, message",
    [
        ((), "Give one or more addresses, or --admins or --managers."),
        (("--using", "nope", "a@example.com"), "The mailer 'nope' is not configured."),
    ],
)
def test_usage_errors(server, args, message):
    with pytest.raises(
        CommandError, match=message.replace("[", r"\[").replace("]", r"\]")
    ):
        run(*args)


def test_empty_admins(server, settings):
    settings.ADMINS = []
    with pytest.raises(CommandError, match="--admins was given, but ADMINS is empty"):
        run("--admins")


def test_smtp_error_in_one_line(server):
    server.reply("MAIL", "550 5.7.1 Sender not allowed")
    with pytest.raises(CommandError) as info:
        run("ann@example.com")
    assert str(info.value) == (
        "Sending with mailer 'default' failed: the server answered 550 5.7.1 "
        "Sender not allowed"
    )


def test_every_recipient_refused(server):
    with pytest.raises(
        CommandError, match=r"refused every recipient: refused-a@example\.com: 550"
    ):
        run("refused-a@example.com")


def test_some_recipients_refused(server):
    with pytest.raises(CommandError, match="1 of 2 recipients were refused"):
        out, err = run("ann@example.com", "refused-b@example.com")
    assert server.deliveries[0].rcpt_tos == ["ann@example.com"]


def test_connection_refused(closed_port):
    with override_settings(
        MAILERS={"default": {"OPTIONS": {"host": "127.0.0.1", "port": closed_port}}}
    ):
        with pytest.raises(CommandError, match="could not connect: Connection refused"):
            run("ann@example.com")


def test_exit_status_and_no_traceback(closed_port):
    """As a user runs it: one line on stderr, exit status 1."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DJANGO_SETTINGS_MODULE": "tests.worker_settings",
        "MAILKIT_SINK_PORT": str(closed_port),
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "django",
            "sendtestemail",
            "--using",
            "smtp",
            "a@example.com",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    # (System check warnings, if any, come before it.)
    assert result.stderr.strip().splitlines()[-1] == (
        "CommandError: Sending with mailer 'smtp' failed: could not connect: "
        "Connection refused"
    )


@pytest.fixture
def outbox_server(server):
    with override_settings(
        MAILERS=outbox_via_smtp(server, timeout=5), MAILKIT={"USE_TASKS": True}
    ):
        yield server


@pytest.mark.django_db(transaction=True)
def test_through_an_outbox_it_says_queued_not_sent(outbox_server):
    from django_mailkit.models import OutboxMessage

    out, _ = run("ann@example.com")
    record = OutboxMessage.objects.get()
    assert out.strip() == f"Queued as message {record.pk}; status: Sent."
    assert len(outbox_server.deliveries) == 1


@pytest.mark.django_db(transaction=True)
def test_through_an_outbox_a_failed_delivery_is_an_error(outbox_server):
    from django_mailkit.models import OutboxMessage

    with pytest.raises(CommandError) as info:
        run("refused-ann@example.com")
    record = OutboxMessage.objects.get()
    assert str(info.value).startswith(
        f"Queued as message {record.pk}; status: Failed. "
    )
    assert "refused-ann@example.com: 550" in str(info.value)


@pytest.mark.django_db(transaction=True)
def test_through_an_outbox_a_first_attempt_that_failed_is_an_error(closed_port):
    from django_mailkit.models import OutboxMessage

    nowhere = {
        "BACKEND": "django_mailkit.backends.smtp.EmailBackend",
        "OPTIONS": {"host": "127.0.0.1", "port": closed_port, "timeout": 5},
    }
    outbox = {
        "BACKEND": "django_mailkit.backends.outbox.EmailBackend",
        "OPTIONS": {"deliver_using": "smtp"},
    }
    with override_settings(
        MAILERS={"default": outbox, "smtp": nowhere}, MAILKIT={"USE_TASKS": True}
    ):
        with pytest.raises(CommandError) as info:
            run("ann@example.com")
    record = OutboxMessage.objects.get()
    assert str(info.value).startswith(
        f"Queued as message {record.pk}; status: Queued. The first attempt "
        "failed, and it will be retried: "
    )
