"""SMTP backend: delivers through an SMTP server with Python's smtplib."""

from __future__ import annotations

import email.policy
import logging
import os
import re
import smtplib
import ssl
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from django.core.mail import message as django_message

from .. import conf
from ..envelope import message_envelope
from ..exceptions import SMTPUTF8Unsupported
from ..message import render_bytes
from ..signals import recipients_refused
from .base import BaseEmailBackend

__all__ = ["EmailBackend"]

logger = logging.getLogger("django_mailkit.smtp")

#: Connections one send_messages() call may use at once, when the server
#: offers PIPELINING and the batch is large enough. Most servers accept a
#: few connections per client; shared relays may limit them (Postfix's
#: default is 50, some providers allow 5-10), so the default stays low.
DEFAULT_MAX_CONNECTIONS = 4

#: RCPT TO replies that accept the recipient.
ACCEPTED = frozenset({250, 251})


class EmailBackend(BaseEmailBackend):
    """
    Send messages through an SMTP server.

    One connection is kept open across ``send_messages()`` calls once
    ``open()`` is called (or inside ``with backend:``), and only once
    STARTTLS and AUTH have both succeeded. Server certificates are verified
    against the system's trusted CAs (``SSL_CERT_FILE``/``SSL_CERT_DIR``
    apply); subclass and extend ``ssl_context`` for a private CA.
    """

    delivers_mail = True
    # smtplib.SMTPException is an OSError, as are connection failures.
    silenced_errors = (OSError,)
    legacy_settings = conf.LEGACY_SMTP_SETTINGS

    def __init__(
        self,
        *,
        host: str | None = None,
        port: int | None = None,
        username: str | None = None,
        password: str | None = None,
        use_tls: bool | None = None,
        use_ssl: bool | None = None,
        timeout: float | None = None,
        ssl_certfile: str | os.PathLike[str] | None = None,
        ssl_keyfile: str | os.PathLike[str] | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        options = self.with_legacy_defaults(
            {
                "host": host,
                "port": port,
                "username": username,
                "password": password,
                "use_tls": use_tls,
                "use_ssl": use_ssl,
                "timeout": timeout,
                "ssl_certfile": ssl_certfile,
                "ssl_keyfile": ssl_keyfile,
            }
        )
        self.use_tls = bool(options["use_tls"])
        self.use_ssl = bool(options["use_ssl"])
        if self.use_tls and self.use_ssl:
            raise self.config_error(
                "use_ssl",
                "'use_tls' (STARTTLS) and 'use_ssl' (implicit TLS) are mutually "
                "exclusive; set at most one of them to True.",
            )
        self.host = self._check_host(options["host"])
        self.port = self._check_port(options["port"])
        self.username = self._check_credential("username", options["username"])
        self.password = self._check_credential("password", options["password"])
        self.timeout = self._check_timeout(options["timeout"])
        self.ssl_certfile = self._check_file("ssl_certfile", options["ssl_certfile"])
        self.ssl_keyfile = self._check_file("ssl_keyfile", options["ssl_keyfile"])
        if self.ssl_keyfile and not self.ssl_certfile:
            raise self.config_error(
                "ssl_keyfile", "is set without 'ssl_certfile', which it belongs to."
            )
        if (
            isinstance(max_connections, bool)
            or not isinstance(max_connections, int)
            or not 1 <= max_connections <= 64
        ):
            raise self.config_error(
                "max_connections",
                f"must be a whole number from 1 to 64 (got {max_connections!r}).",
            )
        self.max_connections = max_connections
        self.connection: smtplib.SMTP | None = None

    # Option validation.

    def _check_host(self, host: Any) -> str:
        if host is None:
            if self.alias is None:
                return "localhost"
            raise self.config_error(
                "host", "is required: the SMTP server's host name or IP address."
            )
        if not isinstance(host, str) or not host.strip():
            raise self.config_error(
                "host", f"must be a non-empty host name string (got {host!r})."
            )
        return host

    def _check_port(self, port: Any) -> int:
        if port is None:
            return 465 if self.use_ssl else 587 if self.use_tls else 25
        if isinstance(port, str) and port.strip().isdigit():
            port = int(port)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise self.config_error(
                "port", f"must be a port number from 1 to 65535 (got {port!r})."
            )
        return port

    def _check_credential(self, option: str, value: Any) -> str | None:
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise self.config_error(
                option, f"must be a string (got {type(value).__name__})."
            )
        if not value.isascii():
            # smtplib sends AUTH credentials as ASCII: fail now, not mid-send.
            raise self.config_error(
                option, "must be ASCII: Python's smtplib cannot send other characters."
            )
        return value

    def _check_timeout(self, timeout: Any) -> float | None:
        if timeout is None:
            return None
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or timeout <= 0
        ):
            raise self.config_error(
                "timeout", f"must be a positive number of seconds (got {timeout!r})."
            )
        return timeout

    def _check_file(self, option: str, value: Any) -> str | None:
        if value is None or value == "":
            return None
        path = Path(value)
        if not path.is_file():
            raise self.config_error(option, f"{str(path)!r} is not a readable file.")
        return str(path)

    # Connection.

    @cached_property
    def ssl_context(self) -> ssl.SSLContext:
        """The TLS context for STARTTLS or implicit TLS; verifies the server."""
        context = ssl.create_default_context()
        if self.ssl_certfile:
            context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile)
        return context

    def open(self) -> bool | None:
        """Connect, STARTTLS and log in, unless a connection is already open."""
        with self._lock:
            if self.connection is not None:
                return False
            try:
                self.connection = self._connect()
            except OSError:
                if not self.fail_silently:
                    raise
                return None
            return True

    def _connect(self) -> smtplib.SMTP:
        params: dict[str, Any] = {
            # Django's cached FQDN: socket.getfqdn() can take seconds.
            # (django-stubs omit django.core.mail.message's DNS_NAME import.)
            "local_hostname": str(django_message.DNS_NAME),  # type: ignore[attr-defined]
        }
        if self.timeout is not None:
            params["timeout"] = self.timeout
        if self.use_ssl:
            connection: smtplib.SMTP = smtplib.SMTP_SSL(
                self.host, self.port, context=self.ssl_context, **params
            )
        else:
            connection = smtplib.SMTP(self.host, self.port, **params)
        try:
            if self.use_tls:
                connection.starttls(context=self.ssl_context)
            if self.username and self.password:
                connection.login(self.username, self.password)
        except BaseException:
            # Never keep a half-opened connection: it could send in clear
            # text or unauthenticated.
            _discard(connection)
            raise
        return connection

    def close(self) -> None:
        """Say QUIT and close the connection."""
        with self._lock:
            connection, self.connection = self.connection, None
            if connection is None:
                return
            try:
                connection.quit()
            except (ssl.SSLError, smtplib.SMTPServerDisconnected):
                # Common on TLS connections, or when the server hung up.
                connection.close()
            except smtplib.SMTPException:
                connection.close()
                if not self.fail_silently:
                    raise

    # Sending.

    def send_messages(self, email_messages: Sequence[Any]) -> int:
        """
        Send the messages; return how many the server accepted.

        Every message is built before the first is sent, so bad input fails
        before anything goes out. Then every message is attempted, even when
        an earlier one was refused; the first delivery error is raised at the
        end (unless ``fail_silently``), and each message records its own
        outcome in ``refused_recipients`` and ``smtp_error``. When the server
        offers PIPELINING, a batch costs about one round trip per message, and
        large batches are spread over up to ``max_connections`` connections.
        """
        if not email_messages:
            return 0
        jobs = [job for message in email_messages if (job := Job.build(message))]
        if not jobs:
            return 0
        with self._lock:
            opened = self.open()
            if opened is None:  # failed silently
                return 0
            try:
                results = self._run(jobs)
            finally:
                if opened:
                    self.close()
        sent, first_error = 0, None
        for job, result in zip(jobs, results, strict=True):
            error = self._settle(job, result)
            if error is None:
                sent += 1
            elif first_error is None:
                first_error = error
        if first_error is not None and not self.fail_silently:
            raise first_error
        return sent

    def deliver(self, message: Any) -> bool:
        """Send one message (see send_messages())."""
        return self.send_messages([message]) == 1

    def _settle(
        self, job: Job, result: Transmission | BaseException
    ) -> BaseException | None:
        """Turn one result into the message's outcome; return its error."""
        message = job.message
        message.smtp_error = None
        message.refused_recipients = {}
        if isinstance(result, BaseException):
            message.smtp_error = result
            return result
        refused = {a: r for a, r in result.replies.items() if r[0] not in ACCEPTED}
        error: BaseException | None = None
        if result.data_reply is None:
            error = smtplib.SMTPRecipientsRefused(refused)
        elif result.data_reply[0] != 250:
            error = smtplib.SMTPDataError(*result.data_reply)
        if error is not None:
            message.smtp_error = error
            message.refused_recipients = _decoded(refused)
            return error
        self._report_refused(message, refused, job.message_id)
        return None

    def _run(self, jobs: list[Job]) -> list[Transmission | BaseException]:
        """Send ``jobs`` over the open connection, and extra ones if worth it."""
        connection = self.connection
        assert connection is not None
        try:
            connection.ehlo_or_helo_if_needed()
        except OSError:
            # A kept connection that went stale: _share() opens a new one.
            _discard(connection)
            self.connection = None
            return self._share(jobs, primary=True)
        count = 1
        if connection.has_extn("pipelining"):
            count = max(1, min(self.max_connections, len(jobs) // PER_CONNECTION))
        if count == 1:
            return self._share(jobs, primary=True)
        shares = [jobs[i::count] for i in range(count)]
        results: dict[int, Transmission | BaseException] = {}

        def work(share: list[Job], primary: bool) -> None:
            for job, result in zip(
                share, self._share(share, primary=primary), strict=True
            ):
                results[id(job)] = result

        threads = [
            threading.Thread(target=work, args=(share, False), daemon=True)
            for share in shares[1:]
        ]
        for thread in threads:
            thread.start()
        work(shares[0], True)
        for thread in threads:
            thread.join()
        leftovers = [job for job in jobs if results[id(job)] is NOT_ATTEMPTED]
        if leftovers:
            work(leftovers, True)
        return [results[id(job)] for job in jobs]

    def _share(
        self, jobs: list[Job], *, primary: bool
    ) -> list[Transmission | BaseException]:
        """
        Send ``jobs`` over one connection (the backend's own if ``primary``).

        When the server hangs up, the message in flight gets the error and
        the rest go over a new connection.
        """
        results: list[Any] = [NOT_ATTEMPTED] * len(jobs)
        connection = self.connection if primary else None
        fresh = connection is None
        try:
            while todo := [i for i, r in enumerate(results) if r is NOT_ATTEMPTED]:
                if connection is None:
                    try:
                        connection = self._connect()
                        connection.ehlo_or_helo_if_needed()
                    except OSError as exc:
                        if not primary:
                            # E.g. "421 too many connections": the main
                            # connection takes these over (see _run()).
                            break
                        for i in todo:
                            results[i] = exc
                        break
                    fresh = True
                    if primary:
                        self.connection = connection
                session = _Session(connection)
                for i, result in zip(
                    todo, session.run([jobs[i] for i in todo]), strict=True
                ):
                    results[i] = result
                if (
                    fresh
                    and session.lost
                    and all(results[i] is NOT_ATTEMPTED for i in todo)
                ):
                    # No progress on a fresh connection: give up on the rest.
                    # (A reused one may just have gone stale: try a new one.)
                    for i in todo:
                        results[i] = session.error
                if session.lost:
                    # The server hung up or said 421: never reuse this one.
                    _discard(connection)
                    connection = None
                    if primary:
                        self.connection = None
        finally:
            if not primary and connection is not None:
                _quit(connection)
        return results

    def transmit(
        self,
        sender: str,
        recipients: list[str],
        data: bytes,
        *,
        smtputf8: bool = False,
    ) -> Transmission:
        """
        Run one SMTP mail transaction and return every reply the server gave.

        ``sender`` and ``recipients`` are envelope addresses (see
        ``envelope_address()``), ``data`` the message with CRLF line ends.
        Raises ``SMTPSenderRefused`` when MAIL FROM is refused, and
        smtplib's errors when the connection fails; refused recipients and
        a refused DATA are reported in the result, not raised.
        """
        job = Job(sender, recipients, data, smtputf8)
        with self._lock:
            if self.connection is None and self.open() is None:
                raise smtplib.SMTPServerDisconnected(
                    "Could not connect (failed silently)."
                )
            assert self.connection is not None
            self.connection.ehlo_or_helo_if_needed()
            (result,) = self._share([job], primary=True)
        if isinstance(result, BaseException):
            raise result
        return result

    def _report_refused(
        self, message: Any, refused: dict[str, tuple[int, bytes]], message_id: str
    ) -> None:
        details = _decoded(refused)
        # The SMTP conversation's outcome for this message, for callers
        # to inspect: empty when everyone was accepted.
        message.refused_recipients = details
        if not details:
            return
        logger.warning(
            "Server %s:%s refused %d of %d recipients of %s: %s",
            self.host,
            self.port,
            len(details),
            len(message.recipients()),
            message_id,
            "; ".join(f"{a} ({code} {reply})" for a, (code, reply) in details.items()),
        )
        recipients_refused.send_robust(
            sender=type(self),
            backend=self,
            message=message,
            refused=details,
            mailer=self.alias,
        )


#: Pipelined messages per extra connection before another is worth opening.
PER_CONNECTION = 8
#: A job the connection never got to (it was lost first).
NOT_ATTEMPTED: Any = object()


@dataclass
class Job:
    """One message, ready for the wire."""

    sender: str
    recipients: Sequence[str]
    data: bytes
    smtputf8: bool = False
    message: Any = None
    message_id: str = ""

    @classmethod
    def build(cls, message: Any) -> Job | None:
        """Render ``message``; None when it has no recipients."""
        recipients = message.recipients()
        if not recipients:
            return None
        envelope = message_envelope(message)
        policy = email.policy.SMTPUTF8 if envelope.smtputf8 else email.policy.SMTP
        data, message_id = render_bytes(message, policy)
        return cls(
            envelope.sender,
            envelope.recipients,
            data,
            envelope.smtputf8,
            message,
            message_id,
        )

    def envelope(self, options: list[str]) -> bytes:
        lines = [f"MAIL FROM:<{self.sender}>" + "".join(f" {o}" for o in options)]
        lines.extend(f"RCPT TO:<{address}>" for address in self.recipients)
        return ("\r\n".join(lines) + "\r\n").encode(
            "utf-8" if self.smtputf8 else "ascii"
        )

    def content(self) -> bytes:
        """The DATA content: dot-stuffed, ending with CRLF and the final dot."""
        data = _LEADING_DOT.sub(b"..", self.data)
        if not data.endswith(b"\r\n"):
            data += b"\r\n"
        return data + b".\r\n"


_LEADING_DOT = re.compile(rb"(?m)^\.")


@dataclass
class Transmission:
    """The replies to one mail transaction."""

    #: RCPT TO reply per envelope recipient: (code, reply bytes).
    replies: dict[str, tuple[int, bytes]]
    #: The reply to DATA (or to the message content), or None when no
    #: recipient was accepted.
    data_reply: tuple[int, bytes] | None


class _Session:
    """
    Mail transactions over one connection (RFC 5321, RFC 2920).

    With PIPELINING, MAIL, every RCPT and DATA go in one write, and each
    message's content goes in the same write as the next message's
    commands, so a message costs about one round trip. Replies are read in
    order; every reply is kept.
    """

    def __init__(self, connection: smtplib.SMTP) -> None:
        self.connection = connection
        self.pipelining = connection.has_extn("pipelining")
        self.lost = False
        #: Why the connection was lost, if it was.
        self.error: BaseException | None = None
        # Bytes written but whose replies are still to be read, in order:
        # the previous message's content (its final reply), then RSET.
        self._unsent = b""
        self._awaiting: list[tuple[str, int]] = []

    def run(self, jobs: list[Job]) -> list[Transmission | BaseException]:
        """Return each job's result; NOT_ATTEMPTED for those never started."""
        results: list[Any] = [NOT_ATTEMPTED] * len(jobs)
        try:
            for index, job in enumerate(jobs):
                results[index] = self._one(index, job, results)
                if self.lost:  # 421: the server is closing the connection
                    self._fail_awaiting(
                        results,
                        smtplib.SMTPServerDisconnected(
                            "The server closed the connection (421)."
                        ),
                    )
                    return results
            self._flush(results)
        except OSError as exc:  # smtplib's errors, sockets, TLS
            self.lost = True
            error = exc
            if not isinstance(exc, smtplib.SMTPException):
                error = smtplib.SMTPServerDisconnected(f"Connection lost: {exc}")
                error.__cause__ = exc
            self._fail_awaiting(results, error)
        return results

    def _fail_awaiting(self, results: list[Any], error: BaseException) -> None:
        """
        Give ``error`` to each message whose content went out unanswered.

        Its outcome is unknown (the server may have accepted it: the
        duplicate window, one message wide). The rest never reached DATA,
        so they stay NOT_ATTEMPTED and may go over another connection.
        """
        self.error = error
        for kind, index in self._awaiting:
            if kind == "final":
                results[index] = error

    def _options(self, job: Job) -> list[str]:
        connection = self.connection
        options: list[str] = []
        if job.smtputf8:
            if not connection.has_extn("smtputf8"):
                culprit = next(
                    a for a in [job.sender, *job.recipients] if not a.isascii()
                )
                raise SMTPUTF8Unsupported(culprit)
            options.append("SMTPUTF8")
            if connection.has_extn("8bitmime"):
                options.append("BODY=8BITMIME")
        if connection.does_esmtp and connection.has_extn("size"):
            options.append(f"SIZE={len(job.data)}")
        return options

    def _one(
        self, index: int, job: Job, results: list[Any]
    ) -> Transmission | BaseException:
        try:
            options = self._options(job)
        except SMTPUTF8Unsupported as exc:
            return exc
        if not self.pipelining:
            return self._plain(index, job, options)
        self._send(self._unsent + job.envelope(options) + b"DATA\r\n")
        self._unsent = b""
        self._read_awaiting(results)
        mail = self._reply()
        replies = {address: self._reply() for address in job.recipients}
        data = self._reply()
        if mail[0] != 250:
            if data[0] == 354:  # a broken server: end the empty DATA
                self._send(b".\r\n")
                self._reply()
            return smtplib.SMTPSenderRefused(mail[0], mail[1], job.sender)
        if not any(code in ACCEPTED for code, _ in replies.values()):
            if data[0] == 354:
                self._send(b".\r\n")
                self._reply()
            self._queue(b"RSET\r\n", "rset", index)
            return Transmission(replies, None)
        if data[0] != 354:
            self._queue(b"RSET\r\n", "rset", index)
            return Transmission(replies, data)
        # The final reply arrives after the next message's commands.
        self._queue(job.content(), "final", index)
        return Transmission(replies, None)  # completed by _read_awaiting()

    def _plain(
        self, index: int, job: Job, options: list[str]
    ) -> Transmission | BaseException:
        connection = self.connection
        code, reply = connection.mail(job.sender, options)
        if code != 250:
            self._end(code)
            return smtplib.SMTPSenderRefused(code, reply, job.sender)
        replies: dict[str, tuple[int, bytes]] = {}
        for address in job.recipients:
            replies[address] = connection.rcpt(address)
            if replies[address][0] == 421:
                self._end(421)
                return smtplib.SMTPRecipientsRefused(
                    {a: r for a, r in replies.items() if r[0] not in ACCEPTED}
                )
        if not any(code in ACCEPTED for code, _ in replies.values()):
            self._end(0)
            return Transmission(replies, None)
        code, reply = connection.docmd("DATA")
        if code != 354:
            self._end(code)
            return Transmission(replies, (code, reply))
        self._awaiting.append(("final", index))
        connection.send(job.content())
        final = self._reply()
        self._awaiting.clear()
        self._end(final[0] if final[0] == 421 else 250)
        return Transmission(replies, final)

    def _end(self, code: int) -> None:
        """After a refusal, reset; on 421 the server is closing: so do we."""
        if code == 421:
            self.lost = True
        elif code != 250:
            self.connection.rset()

    def _queue(self, data: bytes, kind: str, index: int) -> None:
        self._unsent += data
        self._awaiting.append((kind, index))

    def _flush(self, results: list[Any]) -> None:
        if self._unsent:
            self._send(self._unsent)
            self._unsent = b""
            self._read_awaiting(results)

    def _read_awaiting(self, results: list[Any]) -> None:
        # Each entry stays until its reply is in: if reading fails, what is
        # still listed has an unknown outcome (see run()).
        while self._awaiting:
            kind, index = self._awaiting[0]
            reply = self._reply()
            del self._awaiting[0]
            if kind == "final":
                results[index].data_reply = reply

    def _send(self, data: bytes) -> None:
        self.connection.send(data)

    def _reply(self) -> tuple[int, bytes]:
        code, reply = self.connection.getreply()
        if code == 421:
            self.lost = True
        return code, reply


def decode_reply(reply: bytes | str) -> str:
    """An SMTP reply as text (servers may send any bytes)."""
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply


def _decoded(refused: dict[str, tuple[int, bytes]]) -> dict[str, tuple[int, str]]:
    return {
        address: (code, decode_reply(reply))
        for address, (code, reply) in refused.items()
    }


def _quit(connection: smtplib.SMTP) -> None:
    try:
        connection.quit()
    except (smtplib.SMTPException, OSError):
        _discard(connection)


def _discard(connection: smtplib.SMTP) -> None:
    try:
        connection.close()
    except OSError:
        pass
