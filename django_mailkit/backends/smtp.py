"""SMTP backend: delivers through an SMTP server with Python's smtplib."""

from __future__ import annotations

import email.policy
import logging
import os
import smtplib
import ssl
from collections.abc import Callable, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

from django.core.mail import message as django_message
from django.core.mail.utils import DNS_NAME  # noqa: F401  (Django 6.1 exports it)

from .. import conf, deprecation
from ..dkim import DKIMSigner, signer_from_option
from ..envelope import Envelope, EnvelopeAddress, message_envelope
from ..exceptions import InvalidMailerValueError
from ..limits import Rate, parse_rate
from ..rendering import render_bytes
from ..signals import recipients_refused
from ..smtp_session import (
    DEFAULT_MAX_RECIPIENTS,
    Job,
    NotStarted,
    Reply,
    Transmission,
    accepted,
    decode_reply,
    discard,
    quit_connection,
    run_jobs,
)
from .base import _NOT_PROVIDED, BaseEmailBackend

__all__ = ["EmailBackend"]

logger = logging.getLogger("django_mailkit.smtp")

#: Connections one send_messages() call may use at once, when the server
#: offers PIPELINING and the batch is large enough. One unless configured:
#: parallel connections are opt-in (docs/topics/backends.rst), because relays count
#: connections per client and some throttle or block beyond a few.
DEFAULT_MAX_CONNECTIONS = 1


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
    legacy_settings = conf.LEGACY_SMTP_SETTINGS

    # Django's parameters, in Django's order (code that builds the backend
    # directly may pass them positionally); ours are keyword-only.
    def __init__(
        self,
        host: str | None = None,
        port: int | None = None,
        username: str | None = None,
        password: str | None = None,
        use_tls: bool | None = None,
        fail_silently: Any = _NOT_PROVIDED,
        use_ssl: bool | None = None,
        timeout: float | None = None,
        ssl_keyfile: str | os.PathLike[str] | None = None,
        ssl_certfile: str | os.PathLike[str] | None = None,
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_recipients_per_transaction: int = DEFAULT_MAX_RECIPIENTS,
        dkim: dict[str, Any] | None = None,
        rate: str | None = None,
        max_connections_total: int | None = None,
        **kwargs: Any,
    ) -> None:
        if "alias" not in kwargs:
            # RemovedInDjango2028Warning: direct construction. (The mailers
            # registry, and Django's get_connection(), are not warned about.)
            deprecation.warn(deprecation.DIRECT_SMTP_BACKEND)
        super().__init__(fail_silently, **kwargs)
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
            raise self.django_error(
                "use_ssl",
                "The 'use_ssl' and 'use_tls' OPTIONS are incompatible. Set at "
                "most one of them to True. ('use_tls' is STARTTLS, 'use_ssl' "
                "implicit TLS.)",
                "EMAIL_USE_TLS/EMAIL_USE_SSL are mutually exclusive, so only set "
                "one of those settings to True. ('use_tls' is STARTTLS, "
                "'use_ssl' implicit TLS.)",
                legacy_class=InvalidMailerValueError,
            )
        self.host = self._check_host(options["host"])
        self.port = self._check_port(options["port"])
        self.username = self._check_credential("username", options["username"])
        self.password = self._check_credential("password", options["password"])
        self.timeout = self._check_timeout(options["timeout"])
        self.ssl_certfile = self._check_file("ssl_certfile", options["ssl_certfile"])
        self.ssl_keyfile = self._check_file("ssl_keyfile", options["ssl_keyfile"])
        if self.ssl_keyfile and not self.ssl_certfile and self.alias is not None:
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
        if (
            isinstance(max_recipients_per_transaction, bool)
            or not isinstance(max_recipients_per_transaction, int)
            or max_recipients_per_transaction < 1
        ):
            raise self.config_error(
                "max_recipients_per_transaction",
                "must be a whole number of at least 1 (got "
                f"{max_recipients_per_transaction!r}); RFC 5321 servers accept "
                "at least 100.",
            )
        self.max_recipients_per_transaction = max_recipients_per_transaction
        #: Signs every message sent (the ``dkim`` OPTION), or None.
        self.dkim_signer: DKIMSigner | None = signer_from_option(
            dkim, lambda detail: self.config_error("dkim", detail)
        )
        # Limits shared by every outbox worker (django_mailkit.limits). A
        # direct send doesn't wait for them: see the docs' "Priorities and
        # limits".
        #: At most this many messages per second, minute or hour.
        self.rate: Rate | None = None
        if rate is not None:
            try:
                self.rate = parse_rate(rate)
            except ValueError as exc:
                raise self.config_error("rate", str(exc)) from None
        if max_connections_total is not None and (
            isinstance(max_connections_total, bool)
            or not isinstance(max_connections_total, int)
            or max_connections_total < 1
        ):
            raise self.config_error(
                "max_connections_total",
                "must be a whole number of at least 1, or None for no limit "
                f"(got {max_connections_total!r}).",
            )
        #: At most this many connections at once, from all workers together.
        self.max_connections_total = max_connections_total
        self.connection: smtplib.SMTP | None = None

    # Option validation.

    def _check_host(self, host: Any) -> str:
        if host is None:
            if self.alias is None:
                return "localhost"
            raise self.django_error(
                "host",
                "OPTIONS must define 'host'. Set it to the SMTP server's host "
                "name or IP address.",
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
        if self.alias is None:
            # As Django 6.1: the EMAIL_SSL_* files are read (and so checked)
            # when a connection is opened, not when the backend is built.
            return str(value)
        path = Path(value)
        if not path.is_file():
            raise self.config_error(option, f"{str(path)!r} is not a readable file.")
        return str(path)

    # Connection.

    @cached_property
    def ssl_context(self) -> ssl.SSLContext:
        """The TLS context for STARTTLS or implicit TLS; verifies the server."""
        context = ssl.create_default_context()
        if self.ssl_certfile or self.ssl_keyfile:
            context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile)  # type: ignore[arg-type]
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
            discard(connection)
            raise
        return connection

    def close(self) -> None:
        """Say QUIT and close the connection."""
        with self._lock:
            connection, self.connection = self.connection, None
            if connection is None:
                return
            error = quit_connection(connection)
            if error is not None and not self.fail_silently:
                raise error

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
        with ``max_connections`` above 1, large batches are spread over
        several connections. A message to more than
        ``max_recipients_per_transaction`` recipients goes in several mail
        transactions, each with the same bytes. With the ``dkim`` OPTION,
        every message is signed once, before the first is sent.
        """
        if not email_messages:
            return 0
        jobs = [job for message in email_messages if (job := _job(message))]
        if not jobs:
            return 0
        self._sign(jobs)
        with self._lock:
            opened = self.open()
            if opened is None:  # failed silently
                return 0
            try:
                self._run(jobs)
            finally:
                if opened:
                    self.close()
        sent, first_error = 0, None
        for job in jobs:
            error = self._settle(job)
            if error is None:
                sent += 1
            elif first_error is None:
                first_error = error
        if first_error is not None and not self.fail_silently:
            raise first_error
        return sent

    def transmit(
        self,
        envelope: Envelope,
        data: bytes,
        *,
        keep_going: Callable[[], bool] | None = None,
    ) -> Transmission:
        """
        Send one message, as stored bytes, and return every reply that counts.

        ``envelope`` comes from ``django_mailkit.envelope`` (only checked
        addresses are written), ``data`` is the message (line ends are made
        CRLF) and is DKIM-signed here when the mailer has the ``dkim``
        OPTION: the caller's bytes stay unsigned. Recipients beyond
        ``max_recipients_per_transaction`` go in further transactions.
        Raises the error when not one recipient got an answer
        (``SMTPSenderRefused`` when MAIL FROM is refused, smtplib's errors
        when the connection fails); otherwise refused recipients, a
        refused DATA and a connection lost part way are in the result.
        ``keep_going`` is asked before each transaction after the first; if
        it says no, the rest are not sent (the result's error says so).
        """
        job = Job(envelope, data, keep_going=keep_going)
        self.transmit_jobs([job])
        result = job.result
        if not result.replies and result.error is not None:
            raise result.error
        return result

    def transmit_jobs(self, jobs: Sequence[Job]) -> None:
        """
        Send ``jobs`` in order over this backend's one connection; each
        job's ``result`` says what happened to it.

        What :meth:`transmit` does for one message, for several: with
        PIPELINING, each message's content goes out with the next one's
        commands, about one round trip a message instead of two. A job's
        ``may_start`` is asked right before its first command is written;
        False leaves it and every job after it untried (their error is
        ``NotStarted``), so the caller decides, message by message, whether
        the sequence goes on. A job whose bytes can't be signed (``dkim``)
        gets that error, and ends the sequence before it: the jobs before it
        go, those after it are ``NotStarted``. Never more than one connection,
        and no thread: the callbacks run in the caller's thread. Raises
        only when no connection could be opened (``fail_silently``).
        """
        for index, job in enumerate(jobs):
            try:
                self._sign([job])
            except Exception as exc:  # SigningError, or dkimpy's own
                # The sequence ends before it: it and the rest go unsent.
                job.stop(exc)
                for later in jobs[index + 1 :]:
                    later.stop(NotStarted("Not started: an earlier job was not."))
                break
        if all(job.finished for job in jobs):
            return
        with self._lock:
            if self.connection is None and self.open() is None:
                raise smtplib.SMTPServerDisconnected(
                    "Could not connect (failed silently)."
                )
            self._run(list(jobs), max_connections=1)

    def _sign(self, jobs: list[Job]) -> None:
        """
        DKIM-sign each message's bytes, once, before any goes out (every
        transaction of a message sends the same signed copy). The bytes the
        caller holds, such as the outbox's stored ones, stay unsigned.
        """
        if self.dkim_signer is not None:
            for job in jobs:
                job.data = self.dkim_signer.sign(job.data)

    def _run(self, jobs: list[Job], *, max_connections: int | None = None) -> None:
        self.connection = run_jobs(
            jobs,
            connect=self._connect,
            connection=self.connection,
            max_recipients=self.max_recipients_per_transaction,
            max_connections=max_connections or self.max_connections,
        )

    def _settle(self, job: Job) -> BaseException | None:
        """Record one message's outcome on it; return its error, if any."""
        message, result = job.message, job.result
        refused = {
            address: reply
            for address, reply in result.replies.items()
            if not accepted(reply.code)
        }
        message.smtp_error = result.error
        message.refused_recipients = _decoded(refused)
        if len(refused) < len(result.replies):
            # Delivered to someone: sent, even if the connection was lost
            # before the rest (sending it again would reach them twice).
            self._report_refused(message, refused, job)
            return None
        error = result.error
        if error is None and result.data_reply is not None:
            error = smtplib.SMTPDataError(*result.data_reply)
        if error is None:
            error = smtplib.SMTPRecipientsRefused(
                {address: (code, text) for address, (code, text) in refused.items()}
            )
        message.smtp_error = error
        return error

    def _report_refused(
        self, message: Any, refused: dict[EnvelopeAddress, Reply], job: Job
    ) -> None:
        details = _decoded(refused)
        unreached = len(job.envelope.recipients) - len(job.result.replies)
        if unreached:
            logger.warning(
                "Connection to %s:%s lost after %s reached some recipients; "
                "%d were not tried: %s",
                self.host,
                self.port,
                job.message_id,
                unreached,
                job.result.error,
            )
        if not details:
            return
        logger.warning(
            "Server %s:%s refused %d of %d recipients of %s: %s",
            self.host,
            self.port,
            len(details),
            len(job.envelope.recipients),
            job.message_id,
            "; ".join(f"{a} ({code} {reply})" for a, (code, reply) in details.items()),
        )
        recipients_refused.send_robust(
            sender=type(self),
            backend=self,
            message=message,
            refused=details,
            mailer=self.alias,
        )


def _job(message: Any) -> Job | None:
    """Check and render ``message``; None when it has no recipients."""
    if not message.recipients():
        return None
    envelope = message_envelope(message)
    policy = email.policy.SMTPUTF8 if envelope.smtputf8 else email.policy.SMTP
    data, message_id = render_bytes(message, policy)
    return Job(envelope, data, message, message_id)


def _decoded(refused: dict[EnvelopeAddress, Reply]) -> dict[str, tuple[int, str]]:
    return {
        str(address): (code, decode_reply(text))
        for address, (code, text) in refused.items()
    }
