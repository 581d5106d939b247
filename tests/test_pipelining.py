"""
Batches over SMTP: pipelining (RFC 2920), parallel connections, per-message
outcomes. Each test runs against a server with and without PIPELINING (the
smtp_server_factory fixture); extra connections are only used with it.
"""

import smtplib

import pytest
from django.test import override_settings

from django_mailkit import EmailMessage, InvalidMailer, mailers
from django_mailkit.envelope import stored_envelope
from django_mailkit.smtp_session import Job, NotStarted


def batch(count, prefix="m", **kwargs):
    return [
        EmailMessage(
            f"{prefix}{i}",
            f"body {i}",
            "from@example.com",
            [f"u{i}@example.com"],
            **kwargs,
        )
        for i in range(count)
    ]


@pytest.fixture
def server(smtp_server_factory):
    return smtp_server_factory()


def configure(server, **options):
    return override_settings(
        MAILERS={
            "default": {
                "BACKEND": "django_mailkit.backends.smtp.EmailBackend",
                "OPTIONS": {
                    "host": server.host,
                    "port": server.port,
                    "timeout": 5,
                    **options,
                },
            }
        }
    )


def subjects(server):
    return sorted(d.message["Subject"] for d in server.deliveries)


def test_large_batch_spreads_over_max_connections(server):
    messages = batch(64)
    with configure(server, max_connections=4):
        assert mailers.default.send_messages(messages) == 64
    assert subjects(server) == sorted(m.subject for m in messages)
    assert len({d.session.number for d in server.deliveries}) == (
        4 if server.pipelining else 1
    )
    assert all(m.smtp_error is None and m.refused_recipients == {} for m in messages)


def test_small_batch_uses_one_connection(server):
    with configure(server, max_connections=16):
        assert mailers.default.send_messages(batch(7)) == 7
    assert len({d.session.number for d in server.deliveries}) == 1


def test_one_connection_when_asked(server):
    with configure(server, max_connections=1):
        assert mailers.default.send_messages(batch(40)) == 40
    assert len(server.sessions) == 1


def test_open_connection_is_kept_and_extra_ones_closed(server):
    with configure(server, max_connections=2):
        backend = mailers.default
        with backend:
            assert backend.send_messages(batch(32)) == 32
            assert backend.send_messages(batch(3, prefix="again")) == 3
            primary = backend.connection
            assert primary is not None
    sessions = server.wait_closed()
    assert len(sessions) == (2 if server.pipelining else 1)
    assert all(s.quit for s in sessions)


def test_every_message_is_attempted_and_the_first_error_raised(server):
    server.reply("DATA", "554 5.7.1 Rejected", times=1)
    messages = batch(5)
    with configure(server, max_connections=1):
        with pytest.raises(smtplib.SMTPDataError) as info:
            mailers.default.send_messages(messages)
    assert info.value.smtp_code == 554
    assert messages[0].smtp_error is info.value
    assert [m.smtp_error for m in messages[1:]] == [None] * 4
    assert subjects(server) == ["m1", "m2", "m3", "m4"]


def test_fail_silently_counts_what_was_sent(server):
    server.reply("MAIL", "451 4.3.0 Try later", times=2)
    with configure(server, max_connections=1, fail_silently=True):
        assert mailers.default.send_messages(batch(6)) == 4
    assert subjects(server) == ["m2", "m3", "m4", "m5"]


def test_partial_refusal_inside_a_batch(server):
    messages = batch(3)
    messages[1].to.append("refused-user@example.com")
    with configure(server):
        assert mailers.default.send_messages(messages) == 3
    assert list(messages[1].refused_recipients) == ["refused-user@example.com"]
    code, reply = messages[1].refused_recipients["refused-user@example.com"]
    assert code == 550 and "rejected" in reply
    assert messages[0].refused_recipients == messages[2].refused_recipients == {}


def test_hang_up_in_a_batch_resends_only_what_never_got_there(server):
    server.hang_up_during_data(times=1)
    messages = batch(5)
    with configure(server, max_connections=1, fail_silently=True):
        assert mailers.default.send_messages(messages) == 4
    # The first message's content went out and got no answer: its outcome
    # is unknown, so it is reported, never silently resent.
    assert isinstance(messages[0].smtp_error, smtplib.SMTPServerDisconnected)
    assert subjects(server) == ["m1", "m2", "m3", "m4"]
    assert len(server.sessions) == 2


def test_bad_input_fails_before_anything_is_sent(server):
    messages = batch(3)
    messages[2].subject = "bad\nBcc: victim@example.com"
    with configure(server):
        with pytest.raises(ValueError, match="'Subject'"):
            mailers.default.send_messages(messages)
    assert server.deliveries == []


def test_dots_at_line_starts_survive(server):
    body = ".leading dot\n..two dots\n.\nend"
    with configure(server):
        mailers.default.send_messages(
            [EmailMessage("dots", body, "f@example.com", ["a@example.com"])]
        )
    (delivery,) = server.deliveries
    assert delivery.message.get_content().rstrip("\n") == body


@pytest.mark.parametrize("value", [0, 65, "4", True])
def test_max_connections_is_validated(server, value):
    with configure(server, max_connections=value):
        with pytest.raises(InvalidMailer, match=r"\['max_connections'\]"):
            mailers.default


def test_extra_connections_refused_by_the_server(server):
    """A relay that allows one connection: the main one sends everything."""
    server.max_sessions = 1
    messages = batch(32)
    with configure(server, max_connections=4):
        assert mailers.default.send_messages(messages) == 32
    assert subjects(server) == sorted(m.subject for m in messages)
    assert all(m.smtp_error is None for m in messages)


def test_outcome_attributes_before_and_after_sending(server):
    """Declared on the class: readable before a send, each send sets its own."""
    first, second = batch(2)
    assert first.smtp_error is None
    assert first.refused_recipients == {}
    with pytest.raises(TypeError):  # the class default is shared: read-only
        first.refused_recipients["x@example.com"] = (550, "no")
    second.to.append("refused-user@example.com")
    with configure(server):
        assert mailers.default.send_messages([first, second]) == 2
    assert first.refused_recipients == {}
    assert list(second.refused_recipients) == ["refused-user@example.com"]
    assert EmailMessage.refused_recipients == {}


def _job(i, **kwargs):
    envelope, _ = stored_envelope("from@example.com", [f"u{i}@example.com"])
    return Job(envelope, f"Subject: m{i}\r\n\r\nbody {i}\r\n".encode(), **kwargs)


def test_a_may_start_that_raises_is_that_job_s_error(server):
    """
    transmit_jobs(): a job whose may_start raises gets that error, the ones
    after it are not started, the one before is delivered, and the
    connection stays usable (no content left unsent on it).
    """

    def boom():
        raise RuntimeError("may_start failed")

    first, second, third = _job(0), _job(1, may_start=boom), _job(2)
    with configure(server, timeout=5):
        backend = mailers.default
        with backend:
            backend.transmit_jobs([first, second, third])
            result = backend.transmit(_job(3).envelope, _job(3).data)
    assert first.answered and first.result.error is None
    assert isinstance(second.result.error, RuntimeError)
    assert isinstance(third.result.error, NotStarted)
    assert result.error is None
    assert [d.message["Subject"] for d in server.deliveries] == ["m0", "m3"]
    assert len({d.session.number for d in server.deliveries}) == 1


def _chunked(count, **kwargs):
    envelope, _ = stored_envelope(
        "from@example.com", [f"u{i}@example.com" for i in range(count)]
    )
    return Job(envelope, b"Subject: m\r\n\r\nbody\r\n", **kwargs)


def test_nothing_is_written_after_a_421_to_the_content(server):
    """
    A message in two transactions (452 past two recipients) with a caller
    to ask between them: the first content's reply is read before asking,
    and once it is a 421, nothing more goes over that connection; the rest
    go over a new one.
    """
    server.max_recipients = 2
    server.reply("DATA", "421 4.3.0 Going down", times=1)
    asked = []

    def keep_going():
        asked.append(len(server.sessions_seen()))
        return True

    job = _chunked(4, keep_going=keep_going)
    with configure(server, timeout=5):
        backend = mailers.default
        with backend:
            backend.transmit_jobs([job])
    first = server.wait_closed()[0]
    mails = [c for c in first.commands if c.upper().startswith(b"MAIL FROM")]
    assert len(mails) == 1
    assert len(asked) == 1
    delivered = sorted(a for d in server.deliveries for a in d.rcpt_tos)
    assert delivered == ["u2@example.com", "u3@example.com"]


def test_chunks_cost_no_extra_round_trip_without_a_caller_to_ask(server, monkeypatch):
    """
    send_messages() has no one to ask between a message's transactions:
    each chunk's content goes in the same write as the next chunk's
    commands.
    """
    writes = []
    real_send = smtplib.SMTP.send

    def send(self, data):
        writes.append(data if isinstance(data, bytes) else data.encode())
        return real_send(self, data)

    monkeypatch.setattr(smtplib.SMTP, "send", send)
    to = [f"u{i}@example.com" for i in range(250)]
    with configure(server, timeout=5):
        message = EmailMessage("Hello", "body", "from@example.com", to)
        assert mailers.default.send_messages([message]) == 1
    transactions = [w for w in writes if not w.lower().startswith((b"ehlo", b"quit"))]
    # Three transactions: MAIL…DATA; content, MAIL…DATA; content, MAIL…DATA;
    # content. Without PIPELINING, a command at a time.
    assert len(transactions) == 4 if server.pipelining else len(transactions) > 250
