"""SMTP backend: delivers through an SMTP server with Python's smtplib."""

from __future__ import annotations

import email.policy
import logging
import os
import smtplib
import ssl
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from django.core.mail import message as django_message

from .. import conf
from ..exceptions import SMTPUTF8Unsupported
from ..message import envelope_address, render
from ..signals import recipients_refused
from .base import BaseEmailBackend

__all__ = ["EmailBackend"]

logger = logging.getLogger("django_mailkit.smtp")

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
            "local_hostname": str(django_message.DNS_NAME),
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

    def deliver(self, message: Any) -> bool:
        """Send one message; report recipients the server refused."""
        recipients = message.recipients()
        if not recipients:
            return False
        sender, sender_utf8 = envelope_address(message.from_email, field="from_email")
        envelope = [envelope_address(r, field="recipients") for r in recipients]
        international = sender_utf8 or any(utf8 for _, utf8 in envelope)
        mime = render(
            message, email.policy.SMTPUTF8 if international else email.policy.SMTP
        )
        result = self.transmit(
            sender,
            [address for address, _ in envelope],
            mime.as_bytes(),
            smtputf8=international,
        )
        refused = {
            address: reply
            for address, reply in result.replies.items()
            if reply[0] not in ACCEPTED
        }
        if result.data_reply is None:
            raise smtplib.SMTPRecipientsRefused(refused)
        code, reply = result.data_reply
        if code != 250:
            raise smtplib.SMTPDataError(code, reply)
        self._report_refused(message, refused, mime.get("Message-ID", ""))
        return True

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
        with self._lock:
            if self.connection is None and self.open() is None:
                raise smtplib.SMTPServerDisconnected("Could not connect (failed silently).")
            connection = self.connection
            assert connection is not None
            try:
                return self._transaction(connection, sender, recipients, data, smtputf8)
            except smtplib.SMTPServerDisconnected:
                # smtplib closed the socket; never reuse this connection.
                self.connection = None
                raise

    def _transaction(
        self,
        connection: smtplib.SMTP,
        sender: str,
        recipients: list[str],
        data: bytes,
        smtputf8: bool,
    ) -> Transmission:
        connection.ehlo_or_helo_if_needed()
        options: list[str] = []
        if smtputf8:
            if not connection.has_extn("smtputf8"):
                culprit = next(a for a in [sender, *recipients] if not a.isascii())
                raise SMTPUTF8Unsupported(culprit)
            options.append("SMTPUTF8")
            if connection.has_extn("8bitmime"):
                options.append("BODY=8BITMIME")
        if connection.does_esmtp and connection.has_extn("size"):
            options.append(f"SIZE={len(data)}")
        code, reply = connection.mail(sender, options)
        if code != 250:
            self._end_transaction(connection, code)
            raise smtplib.SMTPSenderRefused(code, reply, sender)
        replies: dict[str, tuple[int, bytes]] = {}
        for address in recipients:
            replies[address] = connection.rcpt(address)
            if replies[address][0] == 421:
                self._end_transaction(connection, 421)
                raise smtplib.SMTPRecipientsRefused(
                    {a: r for a, r in replies.items() if r[0] not in ACCEPTED}
                )
        if not any(code in ACCEPTED for code, _ in replies.values()):
            self._end_transaction(connection, 0)
            return Transmission(replies, None)
        try:
            data_reply = connection.data(data)
        except smtplib.SMTPDataError as exc:  # DATA itself refused (no 354)
            data_reply = (exc.smtp_code, exc.smtp_error)
        if data_reply[0] != 250:
            self._end_transaction(connection, data_reply[0])
        return Transmission(replies, data_reply)

    def _end_transaction(self, connection: smtplib.SMTP, code: int) -> None:
        """Reset after a refusal; on 421 the server is closing: so do we."""
        if code == 421:
            self.connection = None
            _discard(connection)
            return
        try:
            connection.rset()
        except smtplib.SMTPServerDisconnected:
            self.connection = None

    def _report_refused(
        self, message: Any, refused: dict[str, tuple[int, bytes]], message_id: str
    ) -> None:
        details = {
            address: (code, reply.decode("utf-8", "replace"))
            for address, (code, reply) in refused.items()
        }
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


@dataclass
class Transmission:
    """The replies to one mail transaction."""

    #: RCPT TO reply per envelope recipient: (code, reply bytes).
    replies: dict[str, tuple[int, bytes]]
    #: The reply to DATA, or None when no recipient was accepted.
    data_reply: tuple[int, bytes] | None


def _discard(connection: smtplib.SMTP) -> None:
    try:
        connection.close()
    except OSError:
        pass
