"""send_mail(), send_mass_mail(), mail_admins()/mail_managers() and send()."""

import email
import email.policy
import smtplib
from email.headerregistry import Address

import pytest
from django.core import mail as django_mail
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from django_mailkit import (
    EmailMessage,
    EmailMultiAlternatives,
    MailerDoesNotExist,
    mail_admins,
    mail_managers,
    mailers,
    send_mail,
    send_mass_mail,
)
from django_mailkit.backends.base import BaseEmailBackend
from django_mailkit.deprecation import MailkitDeprecationWarning

LOCMEM = "django_mailkit.backends.locmem.EmailBackend"


class RecordingBackend(BaseEmailBackend):
    """A custom backend that records what it was given, and its options."""

    instances: list["RecordingBackend"] = []

    def __init__(self, *, username=None, password=None, **kwargs):
        super().__init__(**kwargs)
        self.username, self.password = username, password
        self.sent = []
        self.opened = 0
        RecordingBackend.instances.append(self)

    def open(self):
        self.opened += 1
        return True

    def deliver(self, message):
        self.sent.append(message)
        return True


class FailingBackend(BaseEmailBackend):
    silenced_errors = (smtplib.SMTPException,)

    def deliver(self, message):
        raise smtplib.SMTPDataError(554, b"rejected")


RECORDING = "tests.test_sending.RecordingBackend"


@pytest.fixture
def recording():
    RecordingBackend.instances.clear()
    with override_settings(
        MAILERS={
            "default": {"BACKEND": RECORDING},
            "other": {"BACKEND": RECORDING},
            "failing": {"BACKEND": "tests.test_sending.FailingBackend"},
        }
    ):
        yield RecordingBackend.instances


def parsed(message, policy=email.policy.default):
    return email.message_from_bytes(message.message().as_bytes(), policy=policy)


class TestUnderTheTestRunner:
    """pytest-django set up Django's test environment: nothing leaves."""

    def test_every_alias_is_in_memory(self, mailoutbox):
        assert send_mail("s", "b", None, ["a@example.com"]) == 1
        assert send_mail("s2", "b", None, ["a@example.com"], using="notifications") == 1
        assert [(m.subject, m.sent_using) for m in mailoutbox] == [
            ("s", "default"),
            ("s2", "notifications"),
        ]
        assert all(
            type(mailers[alias]).__module__.endswith("locmem") for alias in mailers
        )

    def test_djangos_own_send_mail_lands_in_the_outbox(self, mailoutbox):
        assert django_mail.send_mail("django", "b", None, ["a@example.com"]) == 1
        assert [m.subject for m in mailoutbox] == ["django"]
        assert mailoutbox[0].sent_using == "default"


class TestSendMail:
    def test_plain(self, mailoutbox):
        assert (
            send_mail(
                "Subject",
                "Body",
                "from@example.com",
                ["a@example.com", "b@example.com"],
            )
            == 1
        )
        (sent,) = mailoutbox
        assert isinstance(sent, EmailMultiAlternatives)
        assert sent.to == ["a@example.com", "b@example.com"]
        assert sent.from_email == "from@example.com"
        assert sent.alternatives == []
        assert parsed(sent)["To"] == "a@example.com, b@example.com"

    def test_from_none_uses_default_from_email(self, mailoutbox, settings):
        settings.DEFAULT_FROM_EMAIL = "Site <site@example.com>"
        send_mail("s", "b", None, ["a@example.com"])
        assert mailoutbox[0].from_email == "Site <site@example.com>"

    def test_html_message(self, mailoutbox):
        send_mail("s", "text", None, ["a@example.com"], html_message="<p>html</p>")
        msg = parsed(mailoutbox[0])
        assert msg.get_content_type() == "multipart/alternative"
        assert [p.get_content_type() for p in msg.iter_parts()] == [
            "text/plain",
            "text/html",
        ]
        assert msg.get_body(("html",)).get_content().strip() == "<p>html</p>"

    def test_address_objects(self, mailoutbox):
        to = Address(display_name='Doe, "J"', addr_spec="j@example.com")
        send_mail("s", "b", None, [to])
        header = parsed(mailoutbox[0])["To"]
        assert [a.addr_spec for a in header.addresses] == ["j@example.com"]
        assert header.addresses[0].display_name == 'Doe, "J"'

    def test_no_recipients_sends_nothing(self, recording):
        assert send_mail("s", "b", None, []) == 0
        assert all(not b.sent and not b.opened for b in recording)

    def test_using(self, recording):
        assert send_mail("s", "b", None, ["a@example.com"], using="other") == 1
        (backend,) = recording
        assert backend.alias == "other"
        assert [m.subject for m in backend.sent] == ["s"]

    def test_unknown_using(self):
        with pytest.raises(MailerDoesNotExist):
            send_mail("s", "b", None, ["a@example.com"], using="nope")

    @pytest.mark.parametrize(
        "kwargs, message",
        [
            ({"fail_silently": True}, "'fail_silently' is not compatible with 'using'"),
            ({"auth_user": "u"}, "'auth_user' and 'auth_password' are not compatible"),
            (
                {"auth_password": "p"},
                "'auth_user' and 'auth_password' are not compatible",
            ),
        ],
    )
    def test_using_excludes_deprecated_arguments(self, recording, kwargs, message):
        with pytest.warns(MailkitDeprecationWarning):
            with pytest.raises(TypeError, match=message):
                send_mail("s", "b", None, ["a@example.com"], using="other", **kwargs)
        assert not any(b.sent for b in recording)

    def test_using_excludes_connection(self, recording):
        connection = mailers["other"]
        with pytest.warns(MailkitDeprecationWarning, match="'connection'"):
            with pytest.raises(TypeError, match="'connection' is not compatible"):
                send_mail(
                    "s", "b", None, ["a@x.com"], using="other", connection=connection
                )

    def test_deprecated_connection(self, recording):
        connection = mailers["other"]
        with pytest.warns(MailkitDeprecationWarning, match="'connection' argument"):
            assert (
                send_mail("s", "b", None, ["a@example.com"], connection=connection) == 1
            )
        assert [m.subject for m in connection.sent] == ["s"]

    def test_connection_excludes_fail_silently_and_auth(self, recording):
        connection = mailers["other"]
        with pytest.warns(MailkitDeprecationWarning):
            with pytest.raises(TypeError, match="fail_silently"):
                send_mail(
                    "s",
                    "b",
                    None,
                    ["a@x.com"],
                    connection=connection,
                    fail_silently=True,
                )
        with pytest.warns(MailkitDeprecationWarning):
            with pytest.raises(TypeError, match="auth_user"):
                send_mail(
                    "s", "b", None, ["a@x.com"], connection=connection, auth_user="u"
                )

    def test_deprecated_auth_arguments_reach_the_backend(self, recording):
        with pytest.warns(MailkitDeprecationWarning, match="auth_user"):
            send_mail("s", "b", None, ["a@x.com"], auth_user="me", auth_password="pw")
        (backend,) = recording
        assert (backend.alias, backend.username, backend.password) == (
            "default",
            "me",
            "pw",
        )

    def test_deprecated_fail_silently(self, recording):
        with override_settings(
            MAILERS={"default": {"BACKEND": "tests.test_sending.FailingBackend"}}
        ):
            with pytest.raises(smtplib.SMTPDataError):
                send_mail("s", "b", None, ["a@x.com"])
            with pytest.warns(MailkitDeprecationWarning, match="fail_silently"):
                assert send_mail("s", "b", None, ["a@x.com"], fail_silently=True) == 0

    def test_positional_arguments_after_recipient_list_are_deprecated(self, recording):
        with pytest.warns(MailkitDeprecationWarning, match="positional"):
            send_mail("s", "b", None, ["a@x.com"], False, None, None, None, "<p>h</p>")
        (backend,) = recording
        assert backend.sent[0].alternatives[0].content == "<p>h</p>"

    def test_too_many_positional_arguments(self):
        with pytest.raises(
            TypeError,
            match=r"^send_mail\(\) takes at most 9 positional argument\(s\) "
            r"\(including 5 deprecated\) but 10 were given\.$",
        ):
            send_mail("s", "b", None, ["a@x.com"], False, None, None, None, None, "x")

    def test_header_injection_in_subject_sends_nothing(self):
        with override_settings(MAILERS={"default": {"BACKEND": LOCMEM}}):
            django_mail.outbox = []
            with pytest.raises(ValueError, match="'Subject'"):
                send_mail("Hi\r\nBcc: v@example.com", "b", None, ["a@x.com"])
            assert django_mail.outbox == []


class TestSendMassMail:
    def test_one_connection_for_all(self, recording):
        datatuple = (
            ("s1", "b1", "f@example.com", ["a@example.com", "b@example.com"]),
            ("s2", "b2", None, ["c@example.com"]),
        )
        assert send_mass_mail(datatuple) == 2
        (backend,) = recording
        assert backend.opened == 1
        assert [(m.subject, m.to) for m in backend.sent] == [
            ("s1", ["a@example.com", "b@example.com"]),
            ("s2", ["c@example.com"]),
        ]
        assert all(type(m) is EmailMessage for m in backend.sent)

    def test_using(self, recording):
        assert send_mass_mail([("s", "b", None, ["a@x.com"])], using="other") == 1
        assert recording[0].alias == "other"

    def test_messages_without_recipients_are_skipped(self, recording):
        assert (
            send_mass_mail([("s", "b", None, []), ("t", "b", None, ["a@x.com"])]) == 1
        )
        assert [m.subject for m in recording[0].sent] == ["t"]

    def test_deprecated_positional_fail_silently(self, recording):
        with pytest.warns(MailkitDeprecationWarning) as record:
            send_mass_mail([("s", "b", None, ["a@x.com"])], True)
        text = " ".join(str(w.message) for w in record)
        assert "positional" in text and "fail_silently" in text


class TestMailAdmins:
    def test_admins(self, mailoutbox, settings):
        settings.EMAIL_SUBJECT_PREFIX = "[Site] "
        settings.SERVER_EMAIL = "Server <server@example.com>"
        settings.ADMINS = ["Admin <admin@example.com>", "ops@example.com"]
        assert mail_admins("Broken", "details", html_message="<b>details</b>") == 1
        (sent,) = mailoutbox
        assert sent.subject == "[Site] Broken"
        assert sent.from_email == "Server <server@example.com>"
        assert sent.to == ["Admin <admin@example.com>", "ops@example.com"]
        assert sent.alternatives[0].mimetype == "text/html"

    def test_managers(self, mailoutbox, settings):
        settings.MANAGERS = ["boss@example.com"]
        assert mail_managers("Hi", "there", using="notifications") == 1
        assert [(m.to, m.sent_using) for m in mailoutbox] == [
            (["boss@example.com"], "notifications")
        ]

    @pytest.mark.parametrize("value", [[], (), None])
    def test_empty_sends_nothing(self, mailoutbox, settings, value):
        settings.ADMINS = value
        assert mail_admins("s", "b") == 0
        assert mailoutbox == []

    def test_legacy_pairs_send_to_the_addresses(self, mailoutbox, settings):
        import django

        settings.MANAGERS = [
            ("Doe, Jane", "jane@example.com"),
            ("Bob", "bob@example.com"),
        ]
        if django.VERSION >= (6, 0):
            with pytest.warns(MailkitDeprecationWarning, match="MANAGERS"):
                mail_managers("s", "b")
        else:
            mail_managers("s", "b")
        # As Django (5.2 and 6.1 alike): only the addresses are used.
        assert mailoutbox[0].to == ["jane@example.com", "bob@example.com"]
        header = parsed(mailoutbox[0])["To"]
        assert [a.addr_spec for a in header.addresses] == [
            "jane@example.com",
            "bob@example.com",
        ]

    @pytest.mark.parametrize(
        "value, match",
        [
            ("admin@example.com", "It is a str."),
            ([("a", "b", "c")], "The item at index 0 is ('a', 'b', 'c')."),
            (["ok@example.com", 42], "The item at index 1 is 42."),
            # Pairs and strings mixed: Django refuses them too.
            (["ok@example.com", ("a", "a@x.com")], "The item at index 1 is ('a', "),
        ],
    )
    def test_malformed_setting_names_itself(self, mailoutbox, settings, value, match):
        settings.ADMINS = value
        with pytest.raises(ImproperlyConfigured) as info:
            mail_admins("s", "b")
        assert str(info.value).startswith(
            "The ADMINS setting must be a list of email address strings. " + match
        )
        assert mailoutbox == []

    def test_using_and_deprecated_arguments(self, recording, settings):
        settings.ADMINS = ["a@example.com"]
        mail_admins("s", "b", using="other")
        assert recording[-1].alias == "other"
        with pytest.warns(MailkitDeprecationWarning):
            with pytest.raises(TypeError):
                mail_admins("s", "b", using="other", fail_silently=True)


class TestEmailMessageSend:
    def test_returns_one_and_uses_the_default_mailer(self, recording):
        msg = EmailMessage("s", "b", None, ["a@example.com"])
        assert msg.send() == 1
        assert recording[0].alias == "default"

    def test_using(self, recording):
        assert EmailMessage("s", "b", None, ["a@x.com"]).send(using="other") == 1
        assert recording[0].alias == "other"

    def test_no_recipients_returns_zero_without_a_connection(self, recording):
        assert EmailMessage("s", "b", None, []).send(using="other") == 0
        assert EmailMessage("s", "b", None, [], bcc=[""]).send() == 0
        assert recording == []

    def test_bcc_only_is_sent(self, recording):
        assert EmailMessage("s", "b", None, bcc=["hidden@example.com"]).send() == 1

    def test_fail_silently_deprecated(self, recording):
        msg = EmailMessage("s", "b", None, ["a@x.com"])
        with pytest.raises(smtplib.SMTPDataError):
            msg.send(using="failing")
        with override_settings(
            MAILERS={"default": {"BACKEND": "tests.test_sending.FailingBackend"}}
        ):
            with pytest.warns(MailkitDeprecationWarning, match="fail_silently"):
                assert msg.send(fail_silently=True) == 0
        with pytest.warns(MailkitDeprecationWarning):
            with pytest.raises(TypeError, match="not compatible with 'using'"):
                msg.send(True, using="other")

    def test_deprecated_connection(self, recording):
        connection = mailers["other"]
        with pytest.warns(MailkitDeprecationWarning, match="'connection' argument"):
            msg = EmailMessage("s", "b", None, ["a@x.com"], connection=connection)
        assert msg.send() == 1
        assert connection.sent == [msg]
        with pytest.raises(
            TypeError, match="'connection' is not compatible with 'using'"
        ):
            msg.send(using="other")
        with pytest.warns(MailkitDeprecationWarning, match="EmailMessage.connection"):
            assert msg.connection is connection
