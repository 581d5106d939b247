"""
The SMTP backend against a real SMTP server (aiosmtpd, see smtpserver.py).

Every scenario ends in the documented result: a return value, or the
smtplib exception Django's SMTP backend lets through.
"""

import logging
import smtplib
import ssl
import threading
import time
import warnings
from types import SimpleNamespace

import django
import pytest
from django.core import mail as django_mail
from django.core.exceptions import ImproperlyConfigured

from django_mailkit import EmailMessage, InvalidMailer, mailers
from django_mailkit.backends import smtp
from django_mailkit.exceptions import SMTPUTF8Unsupported
from django_mailkit.signals import recipients_refused
from tests.smtpserver import (
    PASSWORD,
    USERNAME,
    mailer_config,
)

SMTP_BACKEND = "django_mailkit.backends.smtp.EmailBackend"
SENDER = "sender@example.com"


def message(subject="Hello", to=("to@example.com",), **kwargs):
    return EmailMessage(
        subject, "Body text.", kwargs.pop("from_email", SENDER), list(to), **kwargs
    )


def subjects(server):
    return [delivery.message["Subject"] for delivery in server.deliveries]


@pytest.fixture
def connect(settings, pki):
    """Point MAILERS[alias] at ``server`` (trusting the test CA); return it."""

    def connect(server, *, alias="default", **options):
        settings.MAILERS = {alias: mailer_config(server, pki, **options)}
        return mailers[alias]

    return connect


@pytest.fixture
def refusals():
    """Collect the kwargs of every recipients_refused signal."""
    received = []

    def receiver(**kwargs):
        received.append(kwargs)

    recipients_refused.connect(receiver)
    yield received
    recipients_refused.disconnect(receiver)


class TestDelivery:
    def test_envelope_and_data(self, smtp_server, connect):
        backend = connect(smtp_server)
        sent = backend.send_messages(
            [
                message(
                    "Envelope",
                    to=["To Person <to@example.com>"],
                    from_email="Sender Name <sender@example.com>",
                    cc=["cc@example.com"],
                    bcc=["hidden@example.com"],
                    reply_to=["reply@example.com"],
                )
            ]
        )
        assert sent == 1
        [delivery] = smtp_server.deliveries
        # Display names stay out of the envelope; Bcc reaches it.
        assert delivery.mail_from == "sender@example.com"
        assert delivery.rcpt_tos == [
            "to@example.com",
            "cc@example.com",
            "hidden@example.com",
        ]
        parsed = delivery.message
        assert parsed["Subject"] == "Envelope"
        assert parsed["From"] == "Sender Name <sender@example.com>"
        assert parsed["To"] == "To Person <to@example.com>"
        assert parsed["Cc"] == "cc@example.com"
        assert parsed["Reply-To"] == "reply@example.com"
        assert parsed.get_content() == "Body text.\n"
        # ...but not the data.
        assert "Bcc" not in parsed
        assert b"hidden@example.com" not in delivery.data
        assert "SMTPUTF8" not in delivery.mail_options

    def test_empty_list_opens_no_connection(self, smtp_server, connect):
        assert connect(smtp_server).send_messages([]) == 0
        time.sleep(0.05)
        assert smtp_server.sessions == []

    def test_message_without_recipients_is_not_sent(self, smtp_server, connect):
        assert connect(smtp_server).send_messages([message(to=())]) == 0
        assert smtp_server.deliveries == []

    def test_a_batch_goes_over_one_session(self, smtp_server, connect):
        batch = [message(f"Batch {n}", to=[f"user{n}@example.com"]) for n in range(3)]
        assert connect(smtp_server).send_messages(batch) == 3
        assert subjects(smtp_server) == ["Batch 0", "Batch 1", "Batch 2"]
        assert [d.rcpt_tos for d in smtp_server.deliveries] == [
            ["user0@example.com"],
            ["user1@example.com"],
            ["user2@example.com"],
        ]
        [session] = smtp_server.wait_closed()
        assert session.quit

    def test_accepted_message_reports_no_refusals(
        self, smtp_server, connect, refusals, caplog
    ):
        caplog.set_level(logging.WARNING, logger="django_mailkit.smtp")
        msg = message()
        assert connect(smtp_server).send_messages([msg]) == 1
        assert msg.refused_recipients == {}
        assert refusals == []
        assert [r for r in caplog.records if r.name == "django_mailkit.smtp"] == []


class TestConnectionReuse:
    def test_open_once_send_many(self, smtp_server, connect):
        backend = connect(smtp_server)
        assert backend.open() is True
        assert backend.open() is False
        for n in range(3):
            assert backend.send_messages([message(f"Reuse {n}")]) == 1
        # Still open: the server has not been told QUIT.
        [session] = smtp_server.sessions
        assert not session.quit
        backend.close()
        assert backend.connection is None
        [session] = smtp_server.wait_closed()
        assert session.quit
        assert [d.session for d in smtp_server.deliveries] == [session] * 3
        backend.close()  # closing twice is harmless

    def test_each_send_without_open_has_its_own_session(self, smtp_server, connect):
        backend = connect(smtp_server)
        assert backend.send_messages([message("One")]) == 1
        assert backend.connection is None
        assert backend.send_messages([message("Two")]) == 1
        sessions = smtp_server.wait_closed()
        assert len(sessions) == 2
        assert all(session.quit for session in sessions)
        assert [d.session for d in smtp_server.deliveries] == sessions

    def test_context_manager(self, smtp_server, connect):
        backend = connect(smtp_server)
        with backend as entered:
            assert entered is backend
            assert backend.connection is not None
            assert backend.send_messages([message("First")]) == 1
            assert backend.send_messages([message("Second")]) == 1
        assert backend.connection is None
        [session] = smtp_server.wait_closed()
        assert session.quit
        assert subjects(smtp_server) == ["First", "Second"]

    def test_context_manager_closes_on_error(self, smtp_server, connect):
        backend = connect(smtp_server)
        with pytest.raises(smtplib.SMTPRecipientsRefused), backend:
            backend.send_messages([message(to=["refused@example.com"])])
        assert backend.connection is None
        [session] = smtp_server.wait_closed()
        assert session.quit

    def test_threads_share_one_backend(self, smtp_server, connect):
        backend = connect(smtp_server)
        threads, per_thread = 8, 5
        start = threading.Barrier(threads)
        results, errors = [], []

        def work(n):
            try:
                start.wait(timeout=5)
                for i in range(per_thread):
                    results.append(backend.send_messages([message(f"T{n}-{i}")]))
            except BaseException as exc:  # reported below, with the thread's context
                errors.append(exc)

        with backend:
            workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join(timeout=30)
        assert errors == []
        assert results == [1] * threads * per_thread
        expected = sorted(
            f"T{n}-{i}" for n in range(threads) for i in range(per_thread)
        )
        assert sorted(subjects(smtp_server)) == expected
        assert len(smtp_server.sessions) == 1


class TestTLS:
    @pytest.mark.parametrize("require_starttls", [False, True])
    def test_starttls(self, smtp_server_factory, connect, require_starttls):
        server = smtp_server_factory(tls="starttls", require_starttls=require_starttls)
        assert connect(server, use_tls=True).send_messages([message()]) == 1
        [delivery] = server.deliveries
        assert delivery.session.starttls

    def test_starttls_only_when_asked(self, smtp_server_factory, connect):
        server = smtp_server_factory(tls="starttls")
        assert connect(server).send_messages([message()]) == 1
        assert not server.deliveries[0].session.encrypted

    def test_server_requiring_starttls_refuses_clear_text(
        self, smtp_server_factory, connect
    ):
        server = smtp_server_factory(tls="starttls", require_starttls=True)
        with pytest.raises(smtplib.SMTPSenderRefused) as excinfo:
            connect(server).send_messages([message()])
        assert excinfo.value.smtp_code == 530
        assert server.deliveries == []

    def test_implicit_tls(self, smtp_server_factory, connect):
        server = smtp_server_factory(tls="implicit")
        assert connect(server, use_ssl=True).send_messages([message()]) == 1
        [delivery] = server.deliveries
        assert delivery.session.tls

    @pytest.mark.parametrize("mode", ["starttls", "implicit"])
    @pytest.mark.parametrize("certificate", ["untrusted_server", "wrong_host_server"])
    def test_unverifiable_certificate_is_refused(
        self, smtp_server_factory, connect, pki, mode, certificate
    ):
        server = smtp_server_factory(tls=mode, certificate=getattr(pki, certificate))
        backend = connect(
            server, use_tls=mode == "starttls", use_ssl=mode == "implicit"
        )
        with pytest.raises(ssl.SSLCertVerificationError):
            backend.send_messages([message()])
        assert backend.connection is None
        assert server.deliveries == []
        server.wait_closed()

    def test_stock_backend_trusts_ssl_cert_file(
        self, smtp_server_factory, settings, pki, monkeypatch
    ):
        server = smtp_server_factory(tls="implicit")
        config = mailer_config(server, use_ssl=True)
        assert config["BACKEND"] == SMTP_BACKEND
        settings.MAILERS = {"default": config}
        # Verification is on: the test CA is unknown to the system.
        monkeypatch.delenv("SSL_CERT_FILE", raising=False)
        with pytest.raises(ssl.SSLCertVerificationError):
            mailers["default"].send_messages([message("Refused")])
        # Django's documented way to trust a private CA without code.
        monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca))
        assert mailers["default"].send_messages([message("Trusted")]) == 1
        assert subjects(server) == ["Trusted"]

    @pytest.mark.parametrize("mode", ["starttls", "implicit"])
    def test_client_certificate(self, smtp_server_factory, connect, pki, mode):
        server = smtp_server_factory(tls=mode, client_ca=pki.ca)
        tls = {"use_tls": mode == "starttls", "use_ssl": mode == "implicit"}
        assert connect(server, **tls).send_messages([message("Anonymous")]) == 1
        backend = connect(
            server,
            ssl_certfile=str(pki.client.cert),
            ssl_keyfile=str(pki.client.key),
            **tls,
        )
        assert backend.send_messages([message("Identified")]) == 1
        anonymous, identified = server.deliveries
        assert anonymous.session.client_cert_cn is None
        assert identified.session.client_cert_cn == "client.test"


class TestAuth:
    @pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
    @pytest.mark.parametrize("tls", [None, "starttls", "implicit"])
    def test_login(self, smtp_server_factory, connect, mechanism, tls):
        server = smtp_server_factory(
            tls=tls,
            auth=True,
            auth_mechanisms=(mechanism,),
            auth_require_tls=tls is not None,
        )
        backend = connect(
            server,
            use_tls=tls == "starttls",
            use_ssl=tls == "implicit",
            username=USERNAME,
            password=PASSWORD,
        )
        assert backend.send_messages([message()]) == 1
        session = server.deliveries[0].session
        assert (session.auth_mechanism, session.auth_login) == (mechanism, USERNAME)

    def test_wrong_password(self, smtp_server_factory, connect):
        server = smtp_server_factory(tls="starttls", auth=True)
        backend = connect(server, use_tls=True, username=USERNAME, password="wrong")
        with pytest.raises(smtplib.SMTPAuthenticationError) as excinfo:
            backend.send_messages([message()])
        assert excinfo.value.smtp_code == 535
        assert backend.connection is None
        assert server.deliveries == []
        [session] = server.wait_closed()
        assert session.auth_login is None

    def test_credentials_are_not_sent_in_clear_text(self, smtp_server_factory, connect):
        # The server offers AUTH only after STARTTLS; the client didn't ask for it.
        server = smtp_server_factory(tls="starttls", auth=True)
        backend = connect(server, username=USERNAME, password=PASSWORD)
        with pytest.raises(smtplib.SMTPNotSupportedError):
            backend.send_messages([message()])
        assert server.deliveries == []
        assert [s.auth_login for s in server.wait_closed()] == [None]

    def test_connection_with_failed_auth_is_not_kept(
        self, smtp_server_factory, connect
    ):
        server = smtp_server_factory(tls="starttls", auth=True)
        server.fail_auth(sessions=1)
        backend = connect(server, use_tls=True, username=USERNAME, password=PASSWORD)
        with pytest.raises(smtplib.SMTPAuthenticationError):
            backend.open()
        assert backend.connection is None
        [failed] = server.wait_closed()
        assert backend.send_messages([message()]) == 1
        failed_again, fresh = server.wait_closed()
        assert failed_again is failed
        assert server.deliveries[0].session is fresh
        assert (fresh.starttls, fresh.auth_login) == (True, USERNAME)

    def test_connection_with_failed_starttls_is_not_kept(
        self, smtp_server_factory, connect
    ):
        server = smtp_server_factory(tls="starttls")
        server.reply(
            "STARTTLS", "454 4.7.0 TLS not available due to temporary reason", times=1
        )
        backend = connect(server, use_tls=True)
        with pytest.raises(smtplib.SMTPResponseException) as excinfo:
            backend.send_messages([message("Never in clear text")])
        assert excinfo.value.smtp_code == 454
        assert backend.connection is None
        assert server.deliveries == []
        [failed] = server.wait_closed()
        assert not failed.starttls
        assert backend.send_messages([message("Encrypted")]) == 1
        [delivery] = server.deliveries
        assert delivery.session is not failed
        assert delivery.session.starttls


class TestRefusals:
    def test_partial_refusal_is_reported(self, smtp_server, connect, refusals, caplog):
        caplog.set_level(logging.WARNING, logger="django_mailkit.smtp")
        backend = connect(smtp_server)
        msg = message(
            to=["one@example.com", "refused-two@example.com"],
            cc=["refused-three@example.com"],
            bcc=["four@example.com"],
        )
        assert backend.send_messages([msg]) == 1
        [delivery] = smtp_server.deliveries
        assert delivery.rcpt_tos == ["one@example.com", "four@example.com"]
        expected = {
            address: (550, f"5.1.1 <{address}>: Recipient address rejected")
            for address in ["refused-two@example.com", "refused-three@example.com"]
        }
        assert msg.refused_recipients == expected
        [record] = [r for r in caplog.records if r.name == "django_mailkit.smtp"]
        assert record.levelno == logging.WARNING
        assert "refused-two@example.com" in record.getMessage()
        assert "refused-three@example.com" in record.getMessage()
        [signal] = refusals
        assert signal["sender"] is type(backend)
        assert signal["backend"] is backend
        assert signal["message"] is msg
        assert signal["refused"] == expected
        assert signal["mailer"] == "default"

    def test_all_refused(self, smtp_server, connect, refusals):
        backend = connect(smtp_server)
        with backend:
            with pytest.raises(smtplib.SMTPRecipientsRefused) as excinfo:
                backend.send_messages(
                    [message(to=["refused-a@example.com", "refused-b@example.com"])]
                )
            assert sorted(excinfo.value.recipients) == [
                "refused-a@example.com",
                "refused-b@example.com",
            ]
            assert {code for code, _ in excinfo.value.recipients.values()} == {550}
            assert smtp_server.deliveries == []
            assert refusals == []
            # The server reset the transaction; the connection still works.
            assert backend.send_messages([message("Next")]) == 1
        assert len(smtp_server.sessions) == 1
        assert subjects(smtp_server) == ["Next"]

    @pytest.mark.parametrize(
        "stage, reply, error",
        [
            ("MAIL", "421 4.3.2 Service shutting down", smtplib.SMTPSenderRefused),
            ("MAIL", "451 4.3.0 Try again later", smtplib.SMTPSenderRefused),
            ("RCPT", "421 4.3.2 Service shutting down", smtplib.SMTPRecipientsRefused),
            (
                "RCPT",
                "451 4.7.1 Greylisted, try again later",
                smtplib.SMTPRecipientsRefused,
            ),
            ("DATA", "421 4.3.2 Service shutting down", smtplib.SMTPDataError),
            ("DATA", "451 4.3.0 Local error in processing", smtplib.SMTPDataError),
            ("DATA", "554 5.7.1 Message rejected as spam", smtplib.SMTPDataError),
        ],
    )
    def test_error_reply(self, smtp_server, connect, stage, reply, error):
        code = int(reply[:3])
        smtp_server.reply(stage, reply, times=1)
        backend = connect(smtp_server)
        with backend:
            with pytest.raises(error) as excinfo:
                backend.send_messages([message("Rejected")])
            if error is smtplib.SMTPRecipientsRefused:
                assert excinfo.value.recipients == {
                    "to@example.com": (code, reply[4:].encode())
                }
            else:
                assert (excinfo.value.smtp_code, excinfo.value.smtp_error) == (
                    code,
                    reply[4:].encode(),
                )
            assert smtp_server.deliveries == []
            # The next message goes through: over the same session, or over
            # a new one when the server closed this one (421).
            assert backend.send_messages([message("Accepted")]) == 1
        assert subjects(smtp_server) == ["Accepted"]
        assert len(smtp_server.sessions) == (2 if code == 421 else 1)

    def test_hang_up_during_data(self, smtp_server, connect):
        smtp_server.hang_up_during_data(times=1)
        backend = connect(smtp_server)
        with backend:
            with pytest.raises(smtplib.SMTPServerDisconnected):
                backend.send_messages([message("Lost")])
            assert smtp_server.deliveries == []
            assert backend.send_messages([message("Resent")]) == 1
        first, second = smtp_server.wait_closed()
        assert smtp_server.deliveries[0].session is second
        assert subjects(smtp_server) == ["Resent"]

    @pytest.mark.parametrize("stage", ["greeting", "DATA"])
    def test_stalled_server_times_out(self, smtp_server, connect, stage):
        timeout = 1.0
        smtp_server.stall(stage)
        backend = connect(smtp_server, timeout=timeout)
        started = time.monotonic()
        with pytest.raises(
            smtplib.SMTPServerDisconnected, match="timed out"
        ) as excinfo:
            backend.send_messages([message()])
        elapsed = time.monotonic() - started
        # smtplib reports the socket timeout as a lost connection.
        assert isinstance(excinfo.value.__context__, TimeoutError)
        assert timeout * 0.9 <= elapsed < timeout + 2
        assert backend.connection is None
        assert smtp_server.deliveries == []


def _refused_port(ctx):
    return {
        "BACKEND": SMTP_BACKEND,
        "OPTIONS": {"host": "127.0.0.1", "port": ctx.closed_port},
    }, message()


def _all_refused(ctx):
    return mailer_config(ctx.factory()), message(to=["refused@example.com"])


def _rejected_data(ctx):
    server = ctx.factory()
    server.reply("DATA", "554 5.7.1 Rejected")
    return mailer_config(server), message()


def _hang_up(ctx):
    server = ctx.factory()
    server.hang_up_during_data()
    return mailer_config(server), message()


def _wrong_password(ctx):
    server = ctx.factory(auth=True, auth_require_tls=False)
    return mailer_config(server, username=USERNAME, password="wrong"), message()


def _untrusted(ctx):
    server = ctx.factory(tls="implicit", certificate=ctx.pki.untrusted_server)
    return mailer_config(server, ctx.pki, use_ssl=True), message()


def _stalled(ctx):
    server = ctx.factory()
    server.stall("MAIL")
    return mailer_config(server, timeout=0.5), message()


def _no_smtputf8(ctx):
    return mailer_config(ctx.factory(smtputf8=False)), message(
        to=["jürgen@example.com"]
    )


class TestFailSilently:
    @pytest.mark.parametrize(
        "scenario, error",
        [
            (_refused_port, ConnectionRefusedError),
            (_all_refused, smtplib.SMTPRecipientsRefused),
            (_rejected_data, smtplib.SMTPDataError),
            (_hang_up, smtplib.SMTPServerDisconnected),
            (_wrong_password, smtplib.SMTPAuthenticationError),
            (_untrusted, ssl.SSLCertVerificationError),
            (_stalled, smtplib.SMTPServerDisconnected),
            (_no_smtputf8, SMTPUTF8Unsupported),
        ],
        ids=lambda value: getattr(value, "__name__", "").strip("_"),
    )
    def test_delivery_errors_are_silenced(
        self, smtp_server_factory, pki, closed_port, settings, scenario, error
    ):
        ctx = SimpleNamespace(
            factory=smtp_server_factory, pki=pki, closed_port=closed_port
        )
        config, msg = scenario(ctx)
        quiet = {**config, "OPTIONS": {**config["OPTIONS"], "fail_silently": True}}
        settings.MAILERS = {"loud": config, "quiet": quiet}
        with pytest.raises(error):
            mailers["loud"].send_messages([msg])
        assert mailers["quiet"].send_messages([msg]) == 0

    @pytest.mark.parametrize("setup", ["421 at RCPT", "554 at DATA", "hang-up"])
    def test_batch_goes_on_after_a_silenced_failure(self, smtp_server, connect, setup):
        if setup == "421 at RCPT":
            smtp_server.reply("RCPT", "421 4.3.2 Closing", times=1)
        elif setup == "554 at DATA":
            smtp_server.reply("DATA", "554 5.7.1 Rejected", times=1)
        else:
            smtp_server.hang_up_during_data(times=1)
        backend = connect(smtp_server, fail_silently=True)
        assert backend.send_messages([message("Failed"), message("Sent")]) == 1
        assert subjects(smtp_server) == ["Sent"]

    @pytest.mark.parametrize(
        "options, fragment",
        [
            ({"host": "h", "use_tls": True, "use_ssl": True}, "are incompatible"),
            ({"port": 25}, "'host'"),
            ({"host": "h", "colour": "red"}, "'colour'"),
            ({"host": "h", "port": "smtp"}, "'port'"),
        ],
    )
    def test_configuration_errors_are_not_silenced(self, settings, options, fragment):
        settings.MAILERS = {
            "default": {
                "BACKEND": SMTP_BACKEND,
                "OPTIONS": {**options, "fail_silently": True},
            }
        }
        with pytest.raises(InvalidMailer, match=fragment):
            mailers["default"]


class TestConfiguration:
    @pytest.mark.parametrize(
        "options, port",
        [
            ({}, 25),
            ({"use_tls": True}, 587),
            ({"use_ssl": True}, 465),
            ({"use_ssl": True, "port": 2465}, 2465),
        ],
    )
    def test_default_ports(self, settings, options, port):
        settings.MAILERS = {
            "default": {
                "BACKEND": SMTP_BACKEND,
                "OPTIONS": {"host": "smtp.example.com", **options},
            }
        }
        backend = mailers["default"]
        assert (backend.host, backend.port) == ("smtp.example.com", port)

    def test_tls_and_ssl_are_exclusive(self, settings):
        settings.MAILERS = {
            "default": {"BACKEND": SMTP_BACKEND, "OPTIONS": {"host": "h"}},
            "notifications": {
                "BACKEND": SMTP_BACKEND,
                "OPTIONS": {"host": "h", "use_tls": True, "use_ssl": True},
            },
        }
        with pytest.raises(InvalidMailer) as excinfo:
            mailers["notifications"]
        assert str(excinfo.value).startswith("MAILERS['notifications']")
        assert "use_tls" in str(excinfo.value) and "use_ssl" in str(excinfo.value)
        assert isinstance(excinfo.value, ImproperlyConfigured)

    def test_host_is_required(self, settings):
        settings.MAILERS = {
            "default": {"BACKEND": SMTP_BACKEND, "OPTIONS": {"port": 2525}}
        }
        with pytest.raises(InvalidMailer) as excinfo:
            mailers["default"]
        assert str(excinfo.value).startswith("MAILERS['default']")
        assert "'host'" in str(excinfo.value)

    def test_unknown_options_are_named(self, settings):
        settings.MAILERS = {
            "default": {
                "BACKEND": SMTP_BACKEND,
                "OPTIONS": {"host": "h", "hots": "typo", "use_starttls": True},
            }
        }
        with pytest.raises(InvalidMailer) as excinfo:
            mailers["default"]
        assert str(excinfo.value).startswith("MAILERS['default']")
        assert "'hots'" in str(excinfo.value)
        assert "'use_starttls'" in str(excinfo.value)

    def test_backends_are_built_unconnected(self, smtp_server, connect):
        backend = connect(smtp_server)
        assert backend.connection is None
        time.sleep(0.05)
        assert smtp_server.sessions == []


class TestInternationalAddresses:
    def test_idn_domains_are_punycoded_in_the_envelope(self, smtp_server, connect):
        msg = message(from_email="noreply@bücher.example", to=["info@münchen.example"])
        assert connect(smtp_server).send_messages([msg]) == 1
        [delivery] = smtp_server.deliveries
        assert delivery.mail_from == "noreply@xn--bcher-kva.example"
        assert delivery.rcpt_tos == ["info@xn--mnchen-3ya.example"]
        assert "SMTPUTF8" not in delivery.mail_options

    @pytest.mark.parametrize(
        "field, address, envelope",
        [
            ("to", "jürgen@example.com", "jürgen@example.com"),
            ("to", "jürgen@münchen.example", "jürgen@xn--mnchen-3ya.example"),
            ("from_email", "jürgen@example.com", "jürgen@example.com"),
        ],
    )
    def test_smtputf8_when_offered(
        self, smtp_server, connect, field, address, envelope
    ):
        kwargs = {"to": [address]} if field == "to" else {"from_email": address}
        assert connect(smtp_server).send_messages([message(**kwargs)]) == 1
        [delivery] = smtp_server.deliveries
        assert "SMTPUTF8" in delivery.mail_options
        seen = delivery.rcpt_tos[0] if field == "to" else delivery.mail_from
        assert seen == envelope
        # The header carries the address as UTF-8 (RFC 6532), not encoded.
        assert "jürgen@".encode() in delivery.data

    def test_smtputf8_not_offered(self, smtp_server_factory, connect):
        server = smtp_server_factory(smtputf8=False)
        backend = connect(server)
        with backend:
            with pytest.raises(SMTPUTF8Unsupported) as excinfo:
                backend.send_messages([message(to=["jürgen@example.com"])])
            assert isinstance(excinfo.value, smtplib.SMTPNotSupportedError)
            assert excinfo.value.address == "jürgen@example.com"
            assert server.deliveries == []
            # Nothing was sent, so the connection is still fine.
            assert backend.send_messages([message(to=["juergen@example.com"])]) == 1
        assert len(server.sessions) == 1


def set_email_settings(settings, **values):
    """
    Set legacy EMAIL_* settings, checking Django's reaction.

    Django 6.1 deprecates them and warns when they are set; earlier versions
    don't. Set them while MAILERS is still defined: the settings fixture
    restores MAILERS first, and Django 6.1 doesn't warn about (or even
    expose) EMAIL_* settings while MAILERS is defined.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name, value in values.items():
            setattr(settings, name, value)
    messages = {(w.category.__name__, str(w.message)) for w in caught}
    if django.VERSION >= (6, 1):
        expected = {
            (
                "RemovedInDjango2028Warning",
                f"The {name} setting is deprecated. "
                "Migrate to MAILERS before Django 2028.",
            )
            for name in values
        }
    else:
        expected = set()
    assert messages == expected


class TestLegacySettings:
    """Without MAILERS, the EMAIL_* settings configure the default mailer."""

    @pytest.mark.parametrize("tls", ["starttls", "implicit"])
    def test_email_settings_configure_the_default_mailer(
        self, smtp_server_factory, settings, pki, monkeypatch, tls
    ):
        server = smtp_server_factory(tls=tls, auth=True)
        set_email_settings(
            settings,
            EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend",
            EMAIL_HOST=server.host,
            EMAIL_PORT=server.port,
            EMAIL_HOST_USER=USERNAME,
            EMAIL_HOST_PASSWORD=PASSWORD,
            EMAIL_USE_TLS=tls == "starttls",
            EMAIL_USE_SSL=tls == "implicit",
            EMAIL_TIMEOUT=7,
        )
        del settings.MAILERS
        monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca))
        # Supporting EMAIL_* is django_mailkit's job: reading them must not
        # warn, even on Django 6.1 (which warns on every read of them).
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            backend = mailers.default
            sent = backend.send_messages([message()])
        assert type(backend) is smtp.EmailBackend
        assert backend.alias is None  # As Django 6.1.
        assert (backend.host, backend.port, backend.timeout) == (
            server.host,
            server.port,
            7,
        )
        assert sent == 1
        session = server.deliveries[0].session
        assert session.encrypted
        assert session.auth_login == USERNAME

    def test_tls_and_ssl_is_djangos_value_error(self, settings):
        set_email_settings(
            settings, EMAIL_BACKEND=SMTP_BACKEND, EMAIL_USE_TLS=True, EMAIL_USE_SSL=True
        )
        del settings.MAILERS
        with pytest.raises(ValueError) as excinfo:
            mailers.default
        assert isinstance(excinfo.value, InvalidMailer)
        assert str(excinfo.value).startswith(
            "EMAIL_USE_TLS/EMAIL_USE_SSL are mutually exclusive, so only set one "
            "of those settings to True."
        )

    def test_port_comes_from_email_port(self, settings):
        # As in Django: EMAIL_PORT defaults to 25 whatever the TLS settings.
        set_email_settings(settings, EMAIL_BACKEND=SMTP_BACKEND, EMAIL_USE_SSL=True)
        del settings.MAILERS
        assert mailers.default.port == 25

    @pytest.mark.skipif(django.VERSION < (6, 1), reason="Django 6.1 deprecates EMAIL_*")
    def test_reading_through_django_would_warn(self, settings):
        # The counterpart of the test above: proof that Django 6.1 does warn
        # on reads, so the silence above is django_mailkit's doing.
        from django.conf import settings as django_settings
        from django.utils.deprecation import RemovedInDjango2028Warning

        set_email_settings(settings, EMAIL_HOST="legacy.example.com")
        del settings.MAILERS
        with pytest.warns(RemovedInDjango2028Warning, match="EMAIL_HOST"):
            assert django_settings.EMAIL_HOST == "legacy.example.com"


def test_django_messages_are_delivered(smtp_server, connect):
    # Interop: Django's own EmailMessage through our SMTP backend.
    msg = django_mail.EmailMessage(
        "From Django", "Body.", SENDER, ["to@example.com"], bcc=["b@example.com"]
    )
    assert connect(smtp_server).send_messages([msg]) == 1
    [delivery] = smtp_server.deliveries
    assert delivery.rcpt_tos == ["to@example.com", "b@example.com"]
    assert delivery.message["Subject"] == "From Django"
    assert b"b@example.com" not in delivery.data
