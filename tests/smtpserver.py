"""
Real SMTP servers for the tests: aiosmtpd on 127.0.0.1, configured per test.

Loaded as a pytest plugin (see ``conftest.py``). The fixtures:

- ``pki``: a throwaway certificate authority and certificates issued at test
  time (session-scoped).
- ``smtp_server_factory``: starts an :class:`SMTPTestServer` (plain, STARTTLS
  or implicit TLS; AUTH; SMTPUTF8 or not) and stops it after the test.
- ``smtp_server``: a plain server.
- ``closed_port``: a local port on which nothing listens.

Every server records each connection (:class:`SessionRecord`, with every raw
command line the client sent) and each message it accepted
(:class:`Delivery`). It can enforce a recipient limit per transaction, and be
told to misbehave: refuse some recipients (any whose local part starts with
``refused``), answer an error at MAIL, RCPT or DATA, hang up in the middle of
DATA, stall, fail AUTH or refuse STARTTLS.

The client trusts the test CA the way Django's documentation suggests for a
private CA: :class:`PrivateCAEmailBackend` subclasses the SMTP backend and
adds the CA to its ``ssl_context``; :func:`mailer_config` builds a MAILERS
entry that uses it. (Tests of the stock backend use ``SSL_CERT_FILE``.)
"""

from __future__ import annotations

import asyncio
import datetime
import email
import email.message
import email.policy
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from django_mailkit.backends import smtp as smtp_backend

__all__ = [
    "PRIVATE_CA_BACKEND",
    "Delivery",
    "PrivateCAEmailBackend",
    "SMTPTestServer",
    "SessionRecord",
    "TestPKI",
    "mailer_config",
]

HOST = "127.0.0.1"
USERNAME = "mailer"
PASSWORD = "s3cret-password"
#: Recipients whose local part starts with this are refused with a 550.
REFUSED_PREFIX = "refused"
PRIVATE_CA_BACKEND = "tests.smtpserver.PrivateCAEmailBackend"
# Long enough to outlast any client timeout used in the tests; a stalled
# handler is cancelled when the server stops.
STALL_FOREVER = 3600.0


# Certificates.


@dataclass(frozen=True)
class CertPair:
    """A PEM certificate file and its private key file."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class TestPKI:
    """Certificates generated for this test session."""

    __test__ = False  # not a test class, despite the name

    #: The test CA's certificate: what a client must trust.
    ca: Path
    #: For 127.0.0.1 and localhost, issued by the test CA.
    server: CertPair
    #: A client certificate issued by the test CA.
    client: CertPair
    #: For 127.0.0.1 and localhost, issued by a CA nobody trusts.
    untrusted_server: CertPair
    #: Issued by the test CA, but for another host name only.
    wrong_host_server: CertPair


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "django_mailkit tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    *,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
    hosts: list[str] | None = None,
    usage: x509.ObjectIdentifier | None = None,
) -> x509.Certificate:
    """Issue a certificate; without ``issuer`` it is a self-signed CA."""
    now = datetime.datetime.now(datetime.UTC)
    issuer_cert, issuer_key = issuer if issuer else (None, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_cert.subject if issuer_cert else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    if issuer is None:
        # Python 3.13 verifies with VERIFY_X509_STRICT: a CA needs these.
        builder = builder.add_extension(
            x509.BasicConstraints(ca=True, path_length=None), critical=True
        ).add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=False, path_length=None), critical=True
        ).add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if hosts:
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        builder = builder.add_extension(
            x509.SubjectAlternativeName(names), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _write_pair(
    directory: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> CertPair:
    pair = CertPair(cert=directory / f"{name}.crt", key=directory / f"{name}.key")
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pair.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return pair


def make_pki(directory: Path) -> TestPKI:
    """Create a test CA, a rogue CA and the certificates the tests use."""

    def key() -> ec.EllipticCurvePrivateKey:
        # EC keys: much faster to generate than RSA ones.
        return ec.generate_private_key(ec.SECP256R1())

    server_auth, client_auth = (
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    )
    local = [HOST, "localhost"]
    ca_key, rogue_key = key(), key()
    ca = _certificate("django_mailkit test CA", ca_key)
    rogue = _certificate("django_mailkit untrusted CA", rogue_key)
    pairs = {}
    for name, issuer, hosts, usage in [
        ("server", (ca, ca_key), local, server_auth),
        ("client", (ca, ca_key), None, client_auth),
        ("untrusted-server", (rogue, rogue_key), local, server_auth),
        ("wrong-host-server", (ca, ca_key), ["mail.example.com"], server_auth),
    ]:
        leaf_key = key()
        leaf = _certificate(
            f"{name}.test", leaf_key, issuer=issuer, hosts=hosts, usage=usage
        )
        pairs[name] = _write_pair(directory, name, leaf, leaf_key)
    ca_file = directory / "ca.crt"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return TestPKI(
        ca=ca_file,
        server=pairs["server"],
        client=pairs["client"],
        untrusted_server=pairs["untrusted-server"],
        wrong_host_server=pairs["wrong-host-server"],
    )


# The client side: trusting the test CA.


class PrivateCAEmailBackend(smtp_backend.EmailBackend):
    """
    The SMTP backend, also trusting the CA in the ``ca_file`` option.

    This is the subclass Django's documentation suggests for a server whose
    certificate comes from a private CA: the system's CAs stay trusted and
    certificates are still verified, host name included.
    """

    def __init__(self, *, ca_file: str | Path | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ca_file = ca_file

    @cached_property
    def ssl_context(self) -> ssl.SSLContext:
        context = super().ssl_context
        if self.ca_file is not None:
            context.load_verify_locations(cafile=self.ca_file)
        return context


# The server side.


@dataclass(eq=False)
class SessionRecord:
    """One TCP connection to the server, as the server saw it."""

    number: int
    #: The client's (host, port).
    peer: tuple[str, int]
    #: Implicit TLS: the connection was encrypted from the start.
    tls: bool
    starttls: bool = False
    auth_mechanism: str | None = None
    auth_login: str | None = None
    #: The client certificate's subject common name, if one was presented.
    client_cert_cn: str | None = None
    quit: bool = False
    closed: threading.Event = field(default_factory=threading.Event)
    #: When the connection was accepted and lost (time.monotonic()).
    opened_at: float = field(default_factory=time.monotonic)
    closed_at: float | None = None
    #: Every command line the server read, raw (CRLF included), in order;
    #: message content (after DATA) is not included.
    commands: list[bytes] = field(default_factory=list)

    @property
    def encrypted(self) -> bool:
        return self.tls or self.starttls


@dataclass(eq=False)
class Delivery:
    """A message the server accepted (replied 250 to its DATA)."""

    session: SessionRecord
    mail_from: str
    rcpt_tos: list[str]
    #: The MAIL FROM parameters, upper-cased (e.g. "SMTPUTF8", "SIZE=123").
    mail_options: list[str]
    data: bytes
    #: When the server accepted it (time.monotonic()).
    accepted_at: float = field(default_factory=time.monotonic)

    @cached_property
    def message(self) -> email.message.EmailMessage:
        # SMTP data has CRLF line ends; Python's parser keeps them in bodies.
        data = self.data.replace(b"\r\n", b"\n")
        parsed = email.message_from_bytes(data, policy=email.policy.default)
        assert isinstance(parsed, email.message.EmailMessage)
        return parsed


class _Rule:
    """A misbehaviour that applies ``times`` times (None: always), once
    ``skip`` occasions have passed."""

    def __init__(self, value: Any, times: int | None, skip: int = 0) -> None:
        self.value = value
        self.remaining = times
        self.skip = skip
        self._lock = threading.Lock()

    def fire(self) -> bool:
        with self._lock:
            if self.skip > 0:
                self.skip -= 1
                return False
            if self.remaining is None:
                return True
            if self.remaining > 0:
                self.remaining -= 1
                return True
            return False


class _RecordingSMTP(SMTP):
    """aiosmtpd's SMTP protocol, recording the connection and misbehaving."""

    def __init__(self, handler: Any, *, test_server: SMTPTestServer, **kwargs: Any):
        super().__init__(handler, **kwargs)
        self.test_server = test_server
        self.record: SessionRecord | None = None
        #: Whether fail_auth() applies to this session (decided at first AUTH).
        self.refuse_auth: bool | None = None
        test_server._protocols.append(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        if self.record is None:
            self.record = self.test_server._new_session(
                peer=transport.get_extra_info("peername"), tls=ssl_object is not None
            )
        else:
            # Called again, with the TLS transport, once STARTTLS succeeded.
            self.record.starttls = True
        if ssl_object is not None:
            self.record.client_cert_cn = _common_name(ssl_object.getpeercert())
        super().connection_made(transport)

    def _cb_client_connected(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        super()._cb_client_connected(reader, writer)
        # Record each command line as read. aiosmtpd reads commands with
        # readuntil()'s default separator and message content with CRLF.
        readuntil = reader.readuntil

        async def recording(separator: bytes = b"\n") -> bytes:
            line = await readuntil(separator)
            if separator == b"\n" and self.record is not None:
                self.record.commands.append(line)
            return line

        reader.readuntil = recording  # type: ignore[method-assign]

    def connection_lost(self, error: Exception | None) -> None:
        if self.record is not None:
            self.record.closed_at = time.monotonic()
            self.record.closed.set()
        super().connection_lost(error)

    async def _handle_client(self) -> None:
        await self.test_server._maybe_stall("greeting")
        limit = self.test_server.max_sessions
        if limit is not None:
            open_sessions = sum(
                1
                for record in self.test_server.sessions_seen()
                if not record.closed.is_set()
            )
            if open_sessions > limit:
                # Like a relay that caps connections per client.
                await self.push("421 4.7.0 Too many connections, try later")
                assert self.transport is not None
                self.transport.close()
                return
        await super()._handle_client()

    async def smtp_STARTTLS(self, arg: str) -> None:
        rule = self.test_server._rules.get("STARTTLS")
        if rule is not None and rule.fire():
            await self.push(rule.value)
            return
        await super().smtp_STARTTLS(arg)

    async def smtp_QUIT(self, arg: str) -> None:
        assert self.record is not None
        self.record.quit = True
        await super().smtp_QUIT(arg)


def _common_name(peercert: dict[str, Any] | None) -> str | None:
    for rdn in (peercert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return None


class _Handler:
    """aiosmtpd handler hooks: apply the test's rules, record deliveries."""

    def __init__(self, test_server: SMTPTestServer) -> None:
        self.test_server = test_server

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        if self.test_server.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        reply = await self.test_server._misbehave("MAIL", server)
        if reply is not None:
            return reply
        # Returning a status skips aiosmtpd's own bookkeeping: do it here.
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        reply = await self.test_server._misbehave("RCPT", server)
        if reply is not None:
            return reply
        if address.startswith(REFUSED_PREFIX):
            return f"550 5.1.1 <{address}>: Recipient address rejected"
        limit = self.test_server.max_recipients
        if limit is not None and len(envelope.rcpt_tos) >= limit:
            # Like Postfix's smtpd_recipient_limit (RFC 5321 4.5.3.1.10).
            return "452 4.5.3 Error: too many recipients"
        rule = self.test_server._recipient_rules.get(address)
        if rule is not None and rule.fire():
            return rule.value
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        reply = await self.test_server._misbehave("DATA", server)
        if reply is not None:
            return reply
        delivery = Delivery(
            session=server.record,
            mail_from=envelope.mail_from,
            rcpt_tos=list(envelope.rcpt_tos),
            mail_options=list(envelope.mail_options),
            data=bytes(envelope.original_content),
        )
        self.test_server.deliveries.append(delivery)
        if self.test_server.on_delivery is not None:
            self.test_server.on_delivery(delivery)
        return "250 2.0.0 OK: queued"


class _Controller(Controller):
    """aiosmtpd's Controller, on a socket bound beforehand to a free port."""

    def __init__(self, handler: Any, *, sock: socket.socket, **kwargs: Any) -> None:
        self._sock = sock
        super().__init__(handler, hostname=HOST, port=sock.getsockname()[1], **kwargs)

    #: The client address of the controller's readiness probe.
    probe_peer: tuple[str, int] | None = None

    def _trigger_server(self) -> None:
        # As aiosmtpd's, but noting the probe's address, so that the probe
        # doesn't count as a client session.
        with ExitStack() as stack:
            sock = stack.enter_context(socket.create_connection((HOST, self.port), 1.0))
            self.probe_peer = sock.getsockname()
            if self.ssl_context:
                client_context = ssl.create_default_context()
                client_context.check_hostname = False
                client_context.verify_mode = ssl.CERT_NONE
                sock = stack.enter_context(client_context.wrap_socket(sock))
            sock.recv(1024)

    def _create_server(self):
        # Binding port 0 ourselves avoids the race of picking a "free" port
        # and binding it later.
        return self.loop.create_server(
            self._factory_invoker, sock=self._sock, ssl=self.ssl_context
        )

    def factory(self) -> SMTP:
        return _RecordingSMTP(self.handler, **self.SMTP_kwargs)


class SMTPTestServer:
    """
    An aiosmtpd server on 127.0.0.1 that records what it receives.

    ``tls`` is None (plain), ``"starttls"`` (offered; required with
    ``require_starttls``) or ``"implicit"``. With ``auth``, AUTH is offered
    (``auth_mechanisms`` limits which; by default only over TLS, as RFC 4954
    recommends) and succeeds for USERNAME/PASSWORD. With ``client_ca``, a
    client certificate issued by that CA is asked for (not required).
    """

    host = HOST

    def __init__(
        self,
        *,
        pki: TestPKI | None = None,
        tls: str | None = None,
        certificate: CertPair | None = None,
        require_starttls: bool = False,
        auth: bool = False,
        auth_mechanisms: tuple[str, ...] | None = None,
        auth_require_tls: bool = True,
        smtputf8: bool = True,
        client_ca: Path | None = None,
        pipelining: bool = False,
    ) -> None:
        if tls not in (None, "starttls", "implicit"):
            raise ValueError(f"unknown tls mode {tls!r}")
        #: Advertise PIPELINING (RFC 2920). aiosmtpd reads commands one line at
        #: a time, so pipelined commands are served in order either way.
        self.pipelining = pipelining
        #: Refuse a connection (421) while this many others are open.
        self.max_sessions: int | None = None
        #: Answer 452 to RCPT beyond this many recipients in a transaction.
        self.max_recipients: int | None = None
        #: Called (in the server's thread) with each message accepted, after
        #: it is recorded and before the reply goes out.
        self.on_delivery: Callable[[Delivery], None] | None = None
        self.deliveries: list[Delivery] = []
        self._sessions: list[SessionRecord] = []
        self._sessions_lock = threading.Lock()
        self._rules: dict[str, _Rule] = {}
        self._recipient_rules: dict[str, _Rule] = {}
        self._protocols: list[_RecordingSMTP] = []
        self._stalls: dict[str, float] = {}
        kwargs: dict[str, Any] = {
            "test_server": self,
            "enable_SMTPUTF8": smtputf8,
            "server_hostname": "mx.test",
            "auth_require_tls": auth_require_tls,
        }
        if tls is not None:
            if certificate is None:
                if pki is None:
                    raise ValueError("TLS needs a certificate (or the pki)")
                certificate = pki.server
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(certificate.cert, certificate.key)
            if client_ca is not None:
                context.verify_mode = ssl.CERT_OPTIONAL
                context.load_verify_locations(cafile=client_ca)
            if tls == "implicit":
                kwargs["ssl_context"] = context
            else:
                kwargs["tls_context"] = context
                kwargs["require_starttls"] = require_starttls
        if tls == "implicit":
            # aiosmtpd only counts STARTTLS as TLS for auth_require_tls.
            kwargs["auth_require_tls"] = False
        if auth:
            kwargs["authenticator"] = self._authenticate
            builtin = {"PLAIN", "LOGIN"}
            if auth_mechanisms is not None:
                kwargs["auth_exclude_mechanism"] = sorted(builtin - {*auth_mechanisms})
        else:
            # aiosmtpd offers LOGIN and PLAIN, failing every attempt, unless
            # told otherwise: offer nothing.
            kwargs["auth_exclude_mechanism"] = ["LOGIN", "PLAIN"]
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((HOST, 0))
        sock.listen()
        self.port: int = sock.getsockname()[1]
        self._controller = _Controller(_Handler(self), sock=sock, **kwargs)

    def __repr__(self) -> str:
        return f"<SMTPTestServer {self.host}:{self.port}>"

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        # Hang up on clients first: a test that failed may have left one
        # connected, and the server's shutdown would wait for it.
        self._controller.loop.call_soon_threadsafe(self._abort_connections)
        self._controller.stop()

    def _abort_connections(self) -> None:
        for protocol in self._protocols:
            for transport in (protocol._original_transport, protocol.transport):
                if transport is not None:
                    transport.abort()

    # What the server saw.

    def sessions_seen(self) -> list[SessionRecord]:
        """Every connection so far, greeted or not."""
        with self._sessions_lock:
            return list(self._sessions)

    def commands(self) -> list[bytes]:
        """Every command line of every client connection, in order."""
        return [line for record in self.sessions for line in record.commands]

    @property
    def sessions(self) -> list[SessionRecord]:
        """Every client connection so far (not the controller's own probe)."""
        probe = self._controller.probe_peer
        with self._sessions_lock:
            return [record for record in self._sessions if record.peer != probe]

    def wait_closed(self, timeout: float = 5.0) -> list[SessionRecord]:
        """Wait until every session is closed; return the sessions."""
        deadline = time.monotonic() + timeout
        for record in self.sessions:
            if not record.closed.wait(max(0.0, deadline - time.monotonic())):
                raise AssertionError(f"session {record.number} still open")
        return self.sessions

    def most_concurrent_sessions(self) -> int:
        """The most client connections that were open at the same time."""
        events = []
        for record in self.sessions:
            events.append((record.opened_at, 1))
            if record.closed_at is not None:
                events.append((record.closed_at, -1))
        # At equal times, a close counts before an open.
        most = current = 0
        for _at, change in sorted(events):
            current += change
            most = max(most, current)
        return most

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until ``predicate()`` holds (for state the server sets later)."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError("timed out waiting for the SMTP server")
            time.sleep(0.01)

    # Misbehaviour, set up by the tests.

    def reply(
        self, stage: str, reply: str, *, times: int | None = None, skip: int = 0
    ) -> None:
        """
        Answer ``reply`` (e.g. "421 ...") at MAIL, RCPT, DATA or STARTTLS
        (after ``skip`` times answered normally).
        """
        if stage not in ("MAIL", "RCPT", "DATA", "STARTTLS"):
            raise ValueError(f"unknown stage {stage!r}")
        self._rules[stage] = _Rule(reply, times, skip)

    def refuse_recipient(
        self, address: str, reply: str, *, times: int | None = None
    ) -> None:
        """Answer ``reply`` (e.g. "451 ...") to RCPT TO for this address."""
        self._recipient_rules[address] = _Rule(reply, times)

    def hang_up_during_data(self, *, times: int | None = None, skip: int = 0) -> None:
        """
        Close the connection after the message data, without replying
        (after ``skip`` messages were accepted normally).
        """
        self._rules["DATA"] = _Rule(None, times, skip)

    def stall(self, stage: str, seconds: float = STALL_FOREVER) -> None:
        """Wait ``seconds`` before the greeting or the reply to MAIL/RCPT/DATA."""
        if stage not in ("greeting", "MAIL", "RCPT", "DATA"):
            raise ValueError(f"unknown stage {stage!r}")
        self._stalls[stage] = seconds

    def fail_auth(self, *, sessions: int | None = None) -> None:
        """
        Reject AUTH, even with the right credentials, in the next ``sessions``.

        Per session, not per attempt: smtplib tries each mechanism offered.
        """
        self._rules["AUTH"] = _Rule(None, sessions)

    # Server-side machinery (runs in the server's thread).

    def _new_session(self, *, peer: tuple[str, int], tls: bool) -> SessionRecord:
        with self._sessions_lock:
            record = SessionRecord(number=len(self._sessions), peer=peer, tls=tls)
            self._sessions.append(record)
            return record

    async def _maybe_stall(self, stage: str) -> None:
        seconds = self._stalls.get(stage)
        if seconds:
            await asyncio.sleep(seconds)

    async def _misbehave(self, stage: str, server: _RecordingSMTP) -> str | None:
        await self._maybe_stall(stage)
        rule = self._rules.get(stage)
        if rule is None or not rule.fire():
            return None
        if rule.value is None:
            # Hang up: the client is left waiting for a reply that never
            # comes. Closing the transport cancels this handler.
            assert server.transport is not None
            server.transport.close()
            await asyncio.sleep(STALL_FOREVER)
        return rule.value

    def _authenticate(self, server, session, envelope, mechanism, auth_data):
        if server.refuse_auth is None:
            rule = self._rules.get("AUTH")
            server.refuse_auth = rule is not None and rule.fire()
        if server.refuse_auth:
            return AuthResult(success=False, handled=False)
        if (auth_data.login, auth_data.password) != (
            USERNAME.encode(),
            PASSWORD.encode(),
        ):
            return AuthResult(success=False, handled=False)
        server.record.auth_mechanism = mechanism
        server.record.auth_login = auth_data.login.decode()
        return AuthResult(success=True)


def mailer_config(
    server: SMTPTestServer, pki: TestPKI | None = None, **options: Any
) -> dict[str, Any]:
    """
    Return a MAILERS entry that sends to ``server``.

    With ``pki``, the backend is :class:`PrivateCAEmailBackend` trusting the
    test CA. The timeout defaults to a few seconds so a broken test fails
    rather than hangs.
    """
    config: dict[str, Any] = {"host": server.host, "port": server.port, "timeout": 5}
    backend = "django_mailkit.backends.smtp.EmailBackend"
    if pki is not None:
        backend = PRIVATE_CA_BACKEND
        config["ca_file"] = str(pki.ca)
    config.update(options)
    return {"BACKEND": backend, "OPTIONS": config}


# Fixtures.


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    """Certificates for this test session (a test CA and a rogue one)."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(params=[False, True], ids=["serial", "pipelining"])
def smtp_server_factory(
    request: pytest.FixtureRequest, pki: TestPKI
) -> Iterator[Callable[..., SMTPTestServer]]:
    """
    Return a function that starts an SMTPTestServer; all stop after the test.

    Every test using it runs twice: against a server that offers PIPELINING
    and one that doesn't, since the client takes a different path for each.
    """
    servers: list[SMTPTestServer] = []

    def start(**kwargs: Any) -> SMTPTestServer:
        kwargs.setdefault("pki", pki)
        kwargs.setdefault("pipelining", request.param)
        server = SMTPTestServer(**kwargs)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def smtp_server(smtp_server_factory: Callable[..., SMTPTestServer]) -> SMTPTestServer:
    """A plain SMTP server (no TLS, no AUTH, SMTPUTF8 offered)."""
    return smtp_server_factory()


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port on 127.0.0.1 that is bound but not listening: connections fail."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        yield sock.getsockname()[1]
