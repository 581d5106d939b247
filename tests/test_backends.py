"""
Every backend honours one contract (BackendContract), plus its own specifics.

A backend's test class says how to configure it (the ``options`` fixture)
and how to read back what it delivered (``delivered()``); the contract tests
are inherited. The SMTP backend runs against the aiosmtpd server from
smtpserver.py.
"""

import email
import email.policy
import io
import os
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import pytest
from django.core import mail as django_mail

from django_mailkit import EmailMessage, InvalidMailer, mailers
from django_mailkit.backends.base import BaseEmailBackend
from tests.smtpserver import mailer_config

ALIAS = "contract"
SENDER = "from@example.com"
SEPARATOR = "-" * 79


class Sent(NamedTuple):
    """What the contract checks of a delivered message."""

    subject: str
    recipients: tuple[str, ...]


def parse(data: bytes | str) -> Sent:
    if isinstance(data, str):
        data = data.encode()
    parsed = email.message_from_bytes(
        data.replace(b"\r\n", b"\n"), policy=email.policy.default
    )
    recipients = tuple(
        address.addr_spec
        for header in ("To", "Cc")
        if parsed[header] is not None
        for address in parsed[header].addresses
    )
    return Sent(str(parsed["Subject"]), recipients)


def parse_dump(text: str) -> list[Sent]:
    """Split the console/file output into messages."""
    return [parse(chunk) for chunk in text.split(f"\n{SEPARATOR}\n") if chunk.strip()]


def messages(count: int, prefix: str = "Contract") -> list[EmailMessage]:
    return [
        EmailMessage(
            f"{prefix} {n}",
            f"Body {n}.",
            SENDER,
            [f"to{n}@example.com"],
            cc=[f"cc{n}@example.com"],
        )
        for n in range(count)
    ]


def expected(count: int, prefix: str = "Contract") -> list[Sent]:
    return [
        Sent(f"{prefix} {n}", (f"to{n}@example.com", f"cc{n}@example.com"))
        for n in range(count)
    ]


INJECTIONS = {
    "subject": {"subject": "Hello\nBcc: victim@example.com"},
    "recipient": {"to": ["to@example.com\nBcc: victim@example.com"]},
    "header": {"headers": {"X-Tag": "tag\r\nBcc: victim@example.com"}},
}


def injected(vector: str) -> EmailMessage:
    kwargs: dict[str, Any] = {
        "subject": "Injected",
        "to": ["to@example.com"],
        **INJECTIONS[vector],
    }
    return EmailMessage(
        kwargs.pop("subject"), "Body.", SENDER, kwargs.pop("to"), **kwargs
    )


class BackendContract:
    """The behaviour every backend shares. Subclasses set how to build and read it."""

    #: The BACKEND dotted path.
    backend_path: ClassVar[str]
    #: Whether what the backend delivered can be read back.
    observable: ClassVar[bool] = True

    @pytest.fixture
    def options(self) -> dict[str, Any]:
        """The mailer's OPTIONS (fixtures set up what delivered() reads)."""
        return {}

    @pytest.fixture(autouse=True)
    def _mailers(self, settings, options):
        self.mailer_options = options
        settings.MAILERS = {ALIAS: {"BACKEND": self.backend_path, "OPTIONS": options}}

    def backend(self) -> BaseEmailBackend:
        return mailers[ALIAS]

    def delivered(self) -> list[Sent]:
        """What was delivered, in order."""
        raise NotImplementedError

    def assert_delivered(self, sent: list[Sent]) -> None:
        if self.observable:
            assert self.delivered() == sent

    # The contract.

    def test_sending_nothing(self):
        assert self.backend().send_messages([]) == 0
        self.assert_delivered([])

    def test_sends_each_message(self):
        assert self.backend().send_messages(messages(3)) == 3
        self.assert_delivered(expected(3))

    def test_alias_is_the_mailers_key(self):
        assert self.backend().alias == ALIAS

    def test_context_manager(self):
        backend = self.backend()
        batch = messages(3)
        with backend as entered:
            assert entered is backend
            assert backend.send_messages(batch[:1]) == 1
            assert backend.send_messages(batch[1:2]) == 1
        # Closed, but not broken: the next send opens a new session.
        assert backend.send_messages(batch[2:]) == 1
        self.assert_delivered(expected(3))

    @pytest.mark.parametrize("vector", INJECTIONS)
    def test_header_injection_is_rejected(self, vector):
        backend = self.backend()
        with pytest.raises(ValueError):
            backend.send_messages([injected(vector)])
        self.assert_delivered([])
        # The backend is still usable.
        assert backend.send_messages(messages(1)) == 1
        self.assert_delivered(expected(1))

    def test_djangos_messages_are_delivered(self):
        message = django_mail.EmailMessage(
            "From Django", "Body.", SENDER, ["to@example.com"], cc=["cc@example.com"]
        )
        assert self.backend().send_messages([message]) == 1
        self.assert_delivered(
            [Sent("From Django", ("to@example.com", "cc@example.com"))]
        )

    def test_unknown_options_are_named(self, settings):
        settings.MAILERS = {
            ALIAS: {
                "BACKEND": self.backend_path,
                "OPTIONS": {**self.mailer_options, "bogus_option": 1},
            }
        }
        with pytest.raises(InvalidMailer) as excinfo:
            self.backend()
        assert str(excinfo.value).startswith(f"MAILERS[{ALIAS!r}]")
        assert "'bogus_option'" in str(excinfo.value)


class TestSMTPBackend(BackendContract):
    backend_path = "django_mailkit.backends.smtp.EmailBackend"

    @pytest.fixture
    def options(self, smtp_server):
        self.server = smtp_server
        return mailer_config(smtp_server)["OPTIONS"]

    def delivered(self):
        # The envelope: to and cc (the contract's messages have no bcc).
        return [
            Sent(d.message["Subject"], tuple(d.rcpt_tos))
            for d in self.server.deliveries
        ]

    def test_context_manager_uses_one_session(self):
        with self.backend() as backend:
            backend.send_messages(messages(1))
            backend.send_messages(messages(1))
        assert len(self.server.sessions) == 1


class TestConsoleBackend(BackendContract):
    backend_path = "django_mailkit.backends.console.EmailBackend"

    @pytest.fixture
    def options(self):
        self.stream = io.StringIO()
        return {"stream": self.stream}

    def delivered(self):
        return parse_dump(self.stream.getvalue())

    def test_writes_to_stdout_by_default(self, settings, capsys):
        settings.MAILERS = {ALIAS: {"BACKEND": self.backend_path}}
        assert self.backend().send_messages(messages(2)) == 2
        assert parse_dump(capsys.readouterr().out) == expected(2)
        assert self.stream.getvalue() == ""


class TestFileBackend(BackendContract):
    backend_path = "django_mailkit.backends.filebased.EmailBackend"

    @pytest.fixture
    def options(self, tmp_path):
        # A Path, in a directory that doesn't exist yet.
        self.directory = tmp_path / "mail" / "outgoing"
        return {"file_path": self.directory}

    def files(self) -> list[Path]:
        if not self.directory.exists():
            return []
        return sorted(
            self.directory.iterdir(), key=lambda path: path.stat().st_mtime_ns
        )

    def delivered(self):
        return [sent for path in self.files() for sent in parse_dump(path.read_text())]

    def test_directory_is_created(self):
        assert not self.directory.exists()
        self.backend()
        assert self.directory.is_dir()

    def test_one_file_per_instance(self):
        backend = self.backend()
        backend.send_messages(messages(2, "Alone"))
        assert len(self.files()) == 1
        # As Django: reopening the same instance appends to its file.
        with backend:
            backend.send_messages(messages(1, "Together"))
            backend.send_messages(messages(1, "Together"))
        (first,) = self.files()
        assert parse_dump(first.read_text()) == (
            expected(2, "Alone") + expected(1, "Together") * 2
        )
        # A new instance (each mailers[alias] is one) starts a new file.
        self.backend().send_messages(messages(1, "Later"))
        assert len(self.files()) == 2
        assert parse_dump(self.files()[1].read_text()) == expected(1, "Later")

    @pytest.mark.parametrize("fail_silently", [False, True])
    def test_file_path_is_required(self, settings, fail_silently):
        settings.MAILERS = {
            ALIAS: {
                "BACKEND": self.backend_path,
                "OPTIONS": {"fail_silently": fail_silently},
            }
        }
        with pytest.raises(InvalidMailer) as excinfo:
            self.backend()
        assert str(excinfo.value).startswith(
            f"MAILERS[{ALIAS!r}]: OPTIONS must define 'file_path'."
        )

    @pytest.mark.parametrize("fail_silently", [False, True])
    @pytest.mark.parametrize(
        "where, fragment",
        [
            ("file", "'file_path' is not a directory: "),
            ("file/sub", "Could not create 'file_path': "),
        ],
    )
    def test_file_path_must_be_a_directory(
        self, settings, tmp_path, fail_silently, where, fragment
    ):
        (tmp_path / "file").write_text("not a directory")
        settings.MAILERS = {
            ALIAS: {
                "BACKEND": self.backend_path,
                "OPTIONS": {
                    "file_path": tmp_path / where,
                    "fail_silently": fail_silently,
                },
            }
        }
        with pytest.raises(InvalidMailer) as excinfo:
            self.backend()
        assert str(excinfo.value).startswith(
            f"MAILERS[{ALIAS!r}]: {fragment}{tmp_path / where}"
        )

    @pytest.mark.skipif(
        hasattr(os, "geteuid") and os.geteuid() == 0,
        reason="root can write to any directory",
    )
    def test_file_path_must_be_writable(self, settings, tmp_path):
        read_only = tmp_path / "read-only"
        read_only.mkdir(mode=0o500)
        settings.MAILERS = {
            ALIAS: {"BACKEND": self.backend_path, "OPTIONS": {"file_path": read_only}}
        }
        try:
            with pytest.raises(InvalidMailer, match="'file_path' is not writable: "):
                self.backend()
        finally:
            read_only.chmod(0o700)


class TestLocmemBackend(BackendContract):
    backend_path = "django_mailkit.backends.locmem.EmailBackend"

    def delivered(self):
        return [
            Sent(
                str(message.subject), tuple(str(a) for a in (*message.to, *message.cc))
            )
            for message in django_mail.outbox
        ]

    def test_messages_are_stamped_with_the_alias(self, settings):
        settings.MAILERS = {
            ALIAS: {"BACKEND": self.backend_path},
            "other": {"BACKEND": self.backend_path},
        }
        ours, djangos = (
            messages(1)[0],
            django_mail.EmailMessage("D", "B", SENDER, ["a@example.com"]),
        )
        mailers[ALIAS].send_messages([ours])
        mailers["other"].send_messages([djangos])
        assert [m.sent_using for m in django_mail.outbox] == [ALIAS, "other"]

    def test_outbox_holds_copies(self):
        original = messages(1)[0]
        self.backend().send_messages([original])
        original.subject = "Changed afterwards"
        [copy] = django_mail.outbox
        assert copy is not original
        assert copy.subject == "Contract 0"


class TestDummyBackend(BackendContract):
    backend_path = "django_mailkit.backends.dummy.EmailBackend"
    observable = False

    @pytest.mark.parametrize("vector", INJECTIONS)
    def test_header_injection_is_rejected(self, vector):
        # Overrides the contract: like Django's, the dummy backend never
        # builds a message, so it can't notice; it only counts.
        assert self.backend().send_messages([injected(vector)]) == 1


class RecordingBackend(BaseEmailBackend):
    """
    A custom backend, written as a third party would: it uses only the
    documented message API and keeps each session's messages in ``sink``.
    """

    def __init__(self, *, sink: list[list[bytes]] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if sink is None:
            raise self.config_error("sink", "is required.")
        self.sink = sink
        self.session: list[bytes] | None = None

    def open(self) -> bool:
        with self._lock:
            if self.session is not None:
                return False
            self.session = []
            return True

    def close(self) -> None:
        with self._lock:
            if self.session is not None:
                self.sink.append(self.session)
                self.session = None

    def deliver(self, message: Any) -> bool:
        assert self.session is not None
        self.session.append(message.message().as_bytes())
        return True


class TestCustomBackend(BackendContract):
    backend_path = f"{__name__}.RecordingBackend"

    @pytest.fixture
    def options(self):
        self.sink = []
        return {"sink": self.sink}

    def delivered(self):
        return [parse(data) for session in self.sink for data in session]

    def test_sessions(self):
        backend = self.backend()
        backend.send_messages(messages(2))
        with backend:
            backend.send_messages(messages(1))
            backend.send_messages(messages(1))
        assert [len(session) for session in self.sink] == [2, 2]

    def test_its_own_options_are_checked(self, settings):
        settings.MAILERS = {ALIAS: {"BACKEND": self.backend_path}}
        with pytest.raises(InvalidMailer) as excinfo:
            self.backend()
        assert str(excinfo.value).startswith(f"MAILERS[{ALIAS!r}]['OPTIONS']['sink']")
