"""
Drop-in fidelity: Django 6.1's exception messages, warnings, names and edge
semantics, on Django 5.2, 6.0 and 6.1.

A project's own tests assert Django's documented behaviour (its messages with
``assertRaisesMessage``, its warnings with ``assertWarns``). They must pass
unchanged after switching ``django.core.mail`` imports to ``django_mailkit``.
Every literal below is copied from Django 6.1.3's ``django/core/mail/`` and
``django/utils/deprecation.py``; they are written out rather than read from
Django so the same assertions run on 5.2 and 6.0, which don't have them. Our
messages may add detail, but only after Django's sentence, so most checks are
"starts with". On Django 6.1, ``TestAgainstDjango61`` also makes Django itself
raise and warn, and compares.
"""

from __future__ import annotations

import contextlib
import email.message
import importlib
import os
import re
import types
import warnings
from email.mime.text import MIMEText
from pathlib import Path

import django
import pytest
from django.core import mail as django_mail
from django.core.exceptions import ImproperlyConfigured
from django.test import SimpleTestCase, override_settings

import django_mailkit
from django_mailkit import (
    EmailMessage,
    EmailMultiAlternatives,
    InvalidMailer,
    MailerDoesNotExist,
    get_connection,
    mail_admins,
    mail_managers,
    mailers,
    send_mail,
    send_mass_mail,
)
from django_mailkit.backends import console, locmem, smtp
from django_mailkit.deprecation import (
    MailkitDeprecationWarning,
    RemovedInDjango2028Warning,
)

DJANGO_60 = django.VERSION >= (6, 0)
DJANGO_61 = django.VERSION >= (6, 1)
LOCMEM = "django.core.mail.backends.locmem.EmailBackend"
CONSOLE = "django.core.mail.backends.console.EmailBackend"
SMTP = "django.core.mail.backends.smtp.EmailBackend"
FILEBASED = "django.core.mail.backends.filebased.EmailBackend"
TO = ["to@example.com"]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0

# Django 6.1's messages, word for word.
FAIL_SILENTLY_WARNING = (
    "The 'fail_silently' argument is deprecated. See 'Migrating email to "
    "mailers' in Django's documentation for recommended replacements."
)
AUTH_WARNING = (
    "The 'auth_user' and 'auth_password' arguments are deprecated. Set "
    "'username' and 'password' OPTIONS in MAILERS instead."
)
CONNECTION_WARNING = (
    "The 'connection' argument is deprecated. Switch to the 'using' argument "
    "with a MAILERS alias."
)
GET_CONNECTION_WARNING = (
    "get_connection() is deprecated. See 'Migrating email to mailers' in "
    "Django's documentation for recommended replacements."
)
NO_DEFAULT_MAILER_WARNING = (
    "Django 2028 will not have a default mailer. Configure settings.MAILERS "
    "to avoid errors when sending email."
)
FAIL_SILENTLY_WITH_CONNECTION = (
    "fail_silently cannot be used with a connection. Pass fail_silently to "
    "get_connection() instead."
)
AUTH_WITH_CONNECTION = (
    "auth_user and auth_password cannot be used with a connection. Pass "
    "auth_user and auth_password to get_connection() instead."
)
CONNECTION_WITH_USING = "'connection' is not compatible with 'using'."
FAIL_SILENTLY_WITH_USING = "'fail_silently' is not compatible with 'using'."
AUTH_WITH_USING = (
    "'auth_user' and 'auth_password' are not compatible with 'using'. Set "
    "'username' and 'password' OPTIONS in MAILERS instead."
)
HEADER_INJECTION = (
    "Header values may not contain linefeed or carriage return characters"
)


@pytest.fixture(autouse=True)
def mailer_settings():
    """A locmem default mailer (Django 6.1's test environment does the same)."""
    with override_settings(
        MAILERS={"default": {"BACKEND": LOCMEM}, "other": {"BACKEND": LOCMEM}}
    ):
        django_mail.outbox = []
        yield


@pytest.fixture
def legacy():
    """No MAILERS: the deprecated EMAIL_* settings apply."""
    from django.conf import settings

    with override_settings():
        del settings.MAILERS
        yield settings


def set_legacy(settings, **values):
    with warnings.catch_warnings():
        # Django 6.1 warns about each EMAIL_* setting itself.
        warnings.filterwarnings("ignore", r"The EMAIL_\w+ setting is deprecated")
        for name, value in values.items():
            setattr(settings, name, value)


def raises(exc_type, text):
    """pytest.raises for an error whose message starts with Django's ``text``."""
    return pytest.raises(exc_type, match="^" + re.escape(text))


@contextlib.contextmanager
def django_warning(*texts, at_caller=True, category=RemovedInDjango2028Warning):
    """
    Expect exactly Django's warnings ``texts`` in Django's category.

    With ``at_caller`` each must point at this file (the user's line), as
    ``skip_file_prefixes`` makes Django's own warnings do.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught
    for text in texts:
        matching = [w for w in caught if str(w.message) == text]
        assert matching, (text, [str(w.message) for w in caught])
        found = matching[0]
        assert issubclass(found.category, category)
        if DJANGO_60:
            # Django's own class, so Django's filters apply.
            from django.utils.deprecation import RemovedInDjango2028Warning as d

            assert issubclass(found.category, d)
        else:
            assert issubclass(found.category, DeprecationWarning)
        if at_caller:
            assert found.filename == __file__, (found.filename, found.lineno)


class TestWarningClass:
    def test_one_class_of_djangos_category(self):
        assert issubclass(MailkitDeprecationWarning, RemovedInDjango2028Warning)
        if DJANGO_60:
            from django.utils.deprecation import RemovedInDjango2028Warning as d

            assert RemovedInDjango2028Warning is d
            assert issubclass(MailkitDeprecationWarning, PendingDeprecationWarning)
        else:
            assert RemovedInDjango2028Warning is MailkitDeprecationWarning
            assert issubclass(MailkitDeprecationWarning, DeprecationWarning)

    def test_djangos_error_filter_catches_ours(self):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            warnings.simplefilter("error", RemovedInDjango2028Warning)
            with pytest.raises(RemovedInDjango2028Warning):
                get_connection()


class TestMailerErrors:
    def test_mailer_does_not_exist(self):
        with raises(MailerDoesNotExist, "The mailer 'nope' is not configured."):
            mailers["nope"]
        with pytest.raises(KeyError):
            mailers["nope"]
        with pytest.raises(ImproperlyConfigured):
            mailers["nope"]

    def test_mailer_does_not_exist_takes_djangos_signature(self):
        error = MailerDoesNotExist(alias="x")
        assert str(error) == "The mailer 'x' is not configured."
        assert error.alias == "x"

    def test_invalid_mailer_takes_djangos_signature(self):
        assert str(InvalidMailer("Bad host h", alias="x")) == "MAILERS['x']: Bad host h"
        assert str(InvalidMailer("Bad host h")) == "Bad host h"

    @pytest.mark.parametrize(
        "config, text",
        [
            (
                {"BACKEND": CONSOLE, "OPTIONS": {"a": 1, "b": 2}},
                "MAILERS['x']: Unknown options 'a', 'b'.",
            ),
            (
                {"BACKEND": LOCMEM, "OPTIONS": {"fail_silently": True}},
                "MAILERS['x']: Unknown options 'fail_silently'.",
            ),
            ({"BACKEND": SMTP}, "MAILERS['x']: OPTIONS must define 'host'."),
            ({"BACKEND": FILEBASED}, "MAILERS['x']: OPTIONS must define 'file_path'."),
            (
                {"OPTIONS": {"host": "h", "use_ssl": True, "use_tls": True}},
                "MAILERS['x']: The 'use_ssl' and 'use_tls' OPTIONS are "
                "incompatible. Set at most one of them to True.",
            ),
            (
                {"BACKEND": "no.such.Backend"},
                "MAILERS['x']: Could not find BACKEND 'no.such.Backend': "
                "No module named 'no'",
            ),
            (
                {"BACKEND": CONSOLE, "OPTIONS": {"alias": "y"}},
                "MAILERS['x']: OPTIONS must not define 'alias'.",
            ),
        ],
    )
    def test_invalid_mailer(self, config, text):
        with override_settings(MAILERS={"x": config}):
            with raises(InvalidMailer, text):
                mailers["x"]

    def test_file_path_errors(self, tmp_path):
        (tmp_path / "file").write_text("")
        cases = [
            (tmp_path / "file", "MAILERS['x']: 'file_path' is not a directory: "),
            (
                tmp_path / "file" / "sub",
                "MAILERS['x']: Could not create 'file_path': ",
            ),
        ]
        for path, text in cases:
            config = {"BACKEND": FILEBASED, "OPTIONS": {"file_path": path}}
            with override_settings(MAILERS={"x": config}):
                with raises(InvalidMailer, f"{text}{path}"):
                    mailers["x"]

    @pytest.mark.skipif(IS_ROOT, reason="root can write to any directory")
    def test_file_path_not_writable(self, tmp_path):
        path = tmp_path / "ro"
        path.mkdir(mode=0o500)
        config = {"BACKEND": FILEBASED, "OPTIONS": {"file_path": path}}
        try:
            with override_settings(MAILERS={"x": config}):
                with raises(
                    InvalidMailer, f"MAILERS['x']: 'file_path' is not writable: {path}"
                ):
                    mailers["x"]
        finally:
            path.chmod(0o700)


class TestLegacySettingErrors:
    def test_tls_and_ssl(self, legacy):
        set_legacy(legacy, EMAIL_BACKEND=SMTP, EMAIL_USE_TLS=True, EMAIL_USE_SSL=True)
        with raises(
            ValueError,
            "EMAIL_USE_TLS/EMAIL_USE_SSL are mutually exclusive, so only set "
            "one of those settings to True.",
        ):
            mailers.default

    def test_file_path_missing(self, legacy):
        set_legacy(legacy, EMAIL_BACKEND=FILEBASED)
        with raises(
            ImproperlyConfigured,
            "The EMAIL_FILE_PATH setting must be set to use the file EmailBackend.",
        ):
            mailers.default

    def test_file_path_not_a_directory(self, legacy, tmp_path):
        (tmp_path / "file").write_text("")
        set_legacy(legacy, EMAIL_BACKEND=FILEBASED, EMAIL_FILE_PATH=tmp_path / "file")
        with raises(
            ImproperlyConfigured,
            "Path for saving email messages exists, but is not a directory: "
            f"{tmp_path / 'file'}",
        ):
            mailers.default
        path = tmp_path / "file" / "sub"
        set_legacy(legacy, EMAIL_FILE_PATH=path)
        with raises(
            ImproperlyConfigured,
            f"Could not create directory for saving email messages: {path} (",
        ):
            mailers.default

    @pytest.mark.skipif(IS_ROOT, reason="root can write to any directory")
    def test_file_path_not_writable(self, legacy, tmp_path):
        path = tmp_path / "ro"
        path.mkdir(mode=0o500)
        set_legacy(legacy, EMAIL_BACKEND=FILEBASED, EMAIL_FILE_PATH=path)
        try:
            with raises(ImproperlyConfigured, f"Could not write to directory: {path}"):
                mailers.default
        finally:
            path.chmod(0o700)

    def test_email_backend_not_found(self, legacy):
        set_legacy(legacy, EMAIL_BACKEND="no.such.Backend")
        # Django lets import_string()'s ImportError through.
        with raises(ImportError, "No module named 'no'"):
            mailers.default
        with django_warning(GET_CONNECTION_WARNING):
            with raises(ImportError, "No module named 'no'"):
                get_connection("no.such.Backend")


class TestMessageErrors:
    @pytest.mark.parametrize(
        "kwargs",
        [
            {"subject": "Hi\nBcc: x@example.com"},
            {"subject": "Hi\rthere"},
            {"to": ["a@example.com\nBcc: x@example.com"]},
            {"from_email": "a@example.com\r\nBcc: x@example.com"},
            {"headers": {"X-Note": "a\nb"}},
        ],
    )
    def test_header_injection(self, kwargs):
        message = EmailMessage(**{"to": TO, **kwargs})
        with raises(ValueError, HEADER_INJECTION):
            message.message()
        with raises(ValueError, HEADER_INJECTION):
            message.send()
        assert django_mail.outbox == []

    def test_attach_errors(self):
        message = EmailMessage(to=TO)
        with raises(ValueError, "content must be provided."):
            message.attach("file.txt")
        part = email.message.MIMEPart()
        with raises(
            ValueError,
            "content and mimetype must not be given when a MIMEPart instance is "
            "provided.",
        ):
            message.attach(part, "content")
        with django_warning(
            "MIMEBase attachments are deprecated. Use an email.message.MIMEPart "
            "instead."
        ):
            with raises(
                ValueError,
                "content and mimetype must not be given when a MIMEBase instance "
                "is provided.",
            ):
                message.attach(MIMEText("x"), mimetype="text/plain")
        with raises(ValueError, "Both content and mimetype must be provided."):
            EmailMultiAlternatives().attach_alternative(None, "text/html")

    def test_list_arguments(self):
        for name in ("to", "cc", "bcc", "reply_to"):
            with raises(TypeError, f'"{name}" argument must be a list or tuple'):
                EmailMessage(**{name: "a@example.com"})

    def test_bcc_header(self):
        with raises(
            ValueError,
            'Bcc is not a valid email header. Use the "bcc" argument to specify '
            "blind carbon copy recipients.",
        ):
            EmailMessage(to=TO, headers={"Bcc": "x@example.com"}).message()

    def test_positional_argument_errors(self):
        with raises(
            TypeError,
            "EmailMessage() takes at most 11 positional argument(s) (including 6 "
            "deprecated) but 12 were given.",
        ):
            EmailMessage("S", "B", None, [], None, None, None, None, None, None, None)
        with raises(
            TypeError,
            "EmailMessage() got both deprecated positional and keyword argument "
            "values for 'bcc'.",
        ):
            EmailMessage("S", "B", None, [], ["b@example.com"], bcc=["c@example.com"])
        with raises(
            TypeError,
            "send_mail() takes at most 9 positional argument(s) (including 5 "
            "deprecated) but 10 were given.",
        ):
            send_mail("s", "b", None, TO, False, None, None, None, None, "x")


class TestStaffSettingErrors:
    @pytest.mark.parametrize("setting", ["ADMINS", "MANAGERS"])
    @pytest.mark.parametrize(
        "value",
        [
            "admin@example.com",
            ["ok@example.com", 42],
            [("Name", "a@example.com", "extra")],
            ["ok@example.com", ("Name", "a@example.com")],
        ],
    )
    def test_malformed(self, setting, value):
        send = mail_admins if setting == "ADMINS" else mail_managers
        with override_settings(**{setting: value}):
            with raises(
                ImproperlyConfigured,
                f"The {setting} setting must be a list of email address strings.",
            ):
                send("s", "b")
        assert django_mail.outbox == []

    @pytest.mark.skipif(not DJANGO_60, reason="Django 5.2 documents the pairs")
    @pytest.mark.parametrize("setting", ["ADMINS", "MANAGERS"])
    def test_pairs_warn(self, setting):
        send = mail_admins if setting == "ADMINS" else mail_managers
        with override_settings(**{setting: [("Name", "a@example.com")]}):
            with django_warning(
                f"Using (name, address) pairs in the {setting} setting is "
                "deprecated. Replace with a list of email address strings."
            ):
                send("s", "b")
        assert django_mail.outbox[0].to == ["a@example.com"]


class TestArgumentErrors:
    """Every TypeError for deprecated arguments combined with others."""

    def sends(self):
        connection = mailers["other"]
        return [
            ("send_mail", lambda **kw: send_mail("s", "b", None, TO, **kw), True),
            (
                "send_mass_mail",
                lambda **kw: send_mass_mail([("s", "b", None, TO)], **kw),
                True,
            ),
            ("mail_admins", lambda **kw: mail_admins("s", "b", **kw), False),
            ("mail_managers", lambda **kw: mail_managers("s", "b", **kw), False),
            (
                "EmailMessage.send",
                lambda connection=None, **kw: EmailMessage(
                    "s",
                    "b",
                    to=TO,
                    **({"connection": connection} if connection else {}),
                ).send(**kw),
                False,
            ),
        ], connection

    def test_with_connection(self):
        sends, connection = self.sends()
        for _name, send, has_auth in sends:
            with django_warning(CONNECTION_WARNING, FAIL_SILENTLY_WARNING):
                with raises(TypeError, FAIL_SILENTLY_WITH_CONNECTION):
                    send(connection=connection, fail_silently=True)
            if has_auth:
                with django_warning(AUTH_WARNING):
                    with raises(TypeError, AUTH_WITH_CONNECTION):
                        send(connection=connection, auth_user="u")
                with django_warning(AUTH_WARNING):
                    with raises(TypeError, AUTH_WITH_CONNECTION):
                        send(connection=connection, auth_password="p")
        assert django_mail.outbox == []

    def test_with_using(self):
        sends, connection = self.sends()
        for _name, send, has_auth in sends:
            with django_warning(CONNECTION_WARNING):
                with raises(TypeError, CONNECTION_WITH_USING):
                    send(connection=connection, using="other")
            with django_warning(FAIL_SILENTLY_WARNING):
                with raises(TypeError, FAIL_SILENTLY_WITH_USING):
                    send(fail_silently=True, using="other")
            if has_auth:
                with django_warning(AUTH_WARNING):
                    with raises(TypeError, AUTH_WITH_USING):
                        send(auth_user="u", using="other")
        assert django_mail.outbox == []

    def test_get_connection_backend_under_mailers(self):
        with django_warning(GET_CONNECTION_WARNING):
            with raises(
                RuntimeError,
                "get_connection(backend, ...) is not supported with MAILERS.",
            ):
                get_connection(CONSOLE)


class TestDeprecationWarnings:
    @pytest.mark.parametrize(
        "call, text",
        [
            (
                lambda: EmailMessage("s", "b", None, TO, ["b@example.com"]),
                "Passing positional argument(s) 'bcc' to EmailMessage() is "
                "deprecated. Use keyword arguments instead.",
            ),
            (
                lambda: EmailMultiAlternatives("s", "b", None, TO, [], None, [], {}),
                "Passing positional argument(s) 'bcc', 'connection', "
                "'attachments', 'headers' to EmailMultiAlternatives() is "
                "deprecated. Use keyword arguments instead.",
            ),
            (
                lambda: send_mail("s", "b", None, TO, False),
                "Passing positional argument(s) 'fail_silently' to send_mail() is "
                "deprecated. Use keyword arguments instead.",
            ),
            (
                lambda: send_mass_mail([("s", "b", None, TO)], False),
                "Passing positional argument(s) 'fail_silently' to "
                "send_mass_mail() is deprecated. Use keyword arguments instead.",
            ),
            (
                lambda: mail_admins("s", "b", False, None, "<p>h</p>"),
                "Passing positional argument(s) 'fail_silently', 'connection', "
                "'html_message' to mail_admins() is deprecated. Use keyword "
                "arguments instead.",
            ),
            (
                lambda: mail_managers("s", "b", False),
                "Passing positional argument(s) 'fail_silently' to mail_managers() "
                "is deprecated. Use keyword arguments instead.",
            ),
            (
                lambda: get_connection(None, False),
                "Passing positional argument(s) 'fail_silently' to "
                "get_connection() is deprecated. Use keyword arguments instead.",
            ),
            (lambda: send_mail("s", "b", None, TO, fail_silently=True), None),
            (lambda: EmailMessage(to=TO).send(fail_silently=True), None),
            (lambda: mail_admins("s", "b", fail_silently=True), None),
        ],
    )
    def test_positional_and_fail_silently(self, call, text):
        with django_warning(text or FAIL_SILENTLY_WARNING):
            call()

    def test_auth_arguments(self):
        for kwargs in ({"auth_user": "u"}, {"auth_password": "p"}):
            with django_warning(AUTH_WARNING):
                send_mail("s", "b", None, TO, **kwargs)
            with django_warning(AUTH_WARNING):
                send_mass_mail([("s", "b", None, TO)], **kwargs)

    def test_connection_argument_and_attribute(self):
        backend = mailers["other"]
        with django_warning(CONNECTION_WARNING):
            message = EmailMessage(to=TO, connection=backend)
        with django_warning("The EmailMessage.connection attribute is deprecated."):
            assert message.connection is backend
        with django_warning(
            "The EmailMessage.connection attribute is deprecated. Switch to "
            "EmailMessage.send(using=...) with a MAILERS alias."
        ):
            message.connection = None
        for send in (
            lambda: send_mail("s", "b", None, TO, connection=backend),
            lambda: send_mass_mail([("s", "b", None, TO)], connection=backend),
            lambda: mail_admins("s", "b", connection=backend),
            lambda: mail_managers("s", "b", connection=backend),
        ):
            with django_warning(CONNECTION_WARNING):
                send()

    def test_get_connection(self):
        with django_warning(GET_CONNECTION_WARNING):
            get_connection()

    def test_direct_smtp_backend(self):
        with django_warning(
            "Directly creating EmailBackend instances is deprecated. "
            "Use mail.mailers instead."
        ):
            smtp.EmailBackend(host="h")

    def test_direct_smtp_backend_takes_djangos_positional_arguments(self):
        with django_warning(
            "Directly creating EmailBackend instances is deprecated. "
            "Use mail.mailers instead."
        ):
            backend = smtp.EmailBackend(
                "h.example.com", 2525, "u", "p", True, True, False, 9, None, None
            )
        assert (backend.host, backend.port, backend.username, backend.password) == (
            "h.example.com",
            2525,
            "u",
            "p",
        )
        assert (backend.use_tls, backend.fail_silently, backend.timeout) == (
            True,
            True,
            9,
        )

    def test_unknown_backend_arguments_without_mailers(self):
        with django_warning(
            "django_mailkit.backends.console.EmailBackend.__init__() does not "
            "support 'colour'. In Django 2028, BaseEmailBackend will raise a "
            "TypeError for unknown keyword arguments."
        ):
            console.EmailBackend(colour="red")
        # Django 6.1's locmem takes no fail_silently either.
        with django_warning(
            "django_mailkit.backends.locmem.EmailBackend.__init__() does not "
            "support 'fail_silently'. In Django 2028, BaseEmailBackend will raise "
            "a TypeError for unknown keyword arguments."
        ):
            locmem.EmailBackend(fail_silently=True)

    def test_no_default_mailer(self, legacy):
        with django_warning(NO_DEFAULT_MAILER_WARNING):
            mailers.default
        with django_warning(GET_CONNECTION_WARNING, NO_DEFAULT_MAILER_WARNING):
            get_connection()
        # Not once the project sets any of the deprecated EMAIL_* settings
        # (it has been warned about those instead).
        set_legacy(legacy, EMAIL_HOST="localhost")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            mailers.default

    def test_legacy_names_on_import(self):
        for name, text in [
            (
                "BadHeaderError",
                "BadHeaderError is deprecated. Replace with ValueError.",
            ),
            (
                "SafeMIMEText",
                "SafeMIMEText is deprecated. The return value of "
                "EmailMessage.message() is an email.message.EmailMessage.",
            ),
            (
                "SafeMIMEMultipart",
                "SafeMIMEMultipart is deprecated. The return value of "
                "EmailMessage.message() is an email.message.EmailMessage.",
            ),
        ]:
            with django_warning(text):
                # Compiled as this file, so "the user's line" is in it.
                code = f"from django_mailkit import {name}"
                exec(compile(code, __file__, "exec"), {})
            with django_warning(text):
                getattr(django_mailkit, name)

    def test_legacy_functions(self):
        from django_mailkit import forbid_multi_line_headers
        from django_mailkit.message import sanitize_address

        # Django 6.0+ warn from inside their own function (as Django's own
        # callers would see); ours do the same on 5.2, at the caller.
        with django_warning(
            "The internal API forbid_multi_line_headers() is deprecated. Python's "
            "modern email API (with email.message.EmailMessage or "
            "email.policy.default) will reject multi-line headers.",
            at_caller=not DJANGO_60,
        ):
            assert forbid_multi_line_headers("X-A", "b", "utf-8") == ("X-A", "b")
        with django_warning(
            "The internal API sanitize_address() is deprecated. Python's modern "
            "email API (with email.message.EmailMessage or email.policy.default) "
            "will handle most required validation and encoding. Use Python's "
            "email.headerregistry.Address to construct formatted addresses from "
            "component parts.",
            at_caller=not DJANGO_60,
        ):
            assert sanitize_address("a@example.com", "utf-8") == "a@example.com"


class TestNames:
    """Names Django 6.1 exports, importable from the matching module."""

    def test_listed_in_the_issue(self):
        from django_mailkit import (  # noqa: F401
            DEFAULT_MAILER_ALIAS,
            DNS_NAME,
            CachedDnsName,
            forbid_multi_line_headers,
        )
        from django_mailkit.message import (  # noqa: F401
            SafeMIMEMessage,
            SafeMIMEMultipart,
            SafeMIMEText,
            sanitize_address,
        )
        from django_mailkit.utils import DNS_NAME as utils_dns_name

        assert DEFAULT_MAILER_ALIAS == "default"
        assert isinstance(DNS_NAME, CachedDnsName)
        assert DNS_NAME is utils_dns_name

    @pytest.mark.skipif(not DJANGO_61, reason="enumerates Django 6.1's modules")
    @pytest.mark.parametrize(
        "django_module, ours",
        [
            ("django.core.mail", "django_mailkit"),
            ("django.core.mail.message", "django_mailkit.message"),
            ("django.core.mail.utils", "django_mailkit.utils"),
            ("django.core.mail.exceptions", "django_mailkit.exceptions"),
            ("django.core.mail.handler", "django_mailkit.handler"),
            ("django.core.mail.backends.base", "django_mailkit.backends.base"),
            ("django.core.mail.backends.smtp", "django_mailkit.backends.smtp"),
            ("django.core.mail.backends.console", "django_mailkit.backends.console"),
            (
                "django.core.mail.backends.filebased",
                "django_mailkit.backends.filebased",
            ),
            ("django.core.mail.backends.locmem", "django_mailkit.backends.locmem"),
            ("django.core.mail.backends.dummy", "django_mailkit.backends.dummy"),
        ],
    )
    def test_every_public_name_of_django_61(self, django_module, ours):
        theirs = importlib.import_module(django_module)
        mine = importlib.import_module(ours)
        missing = []
        for name in public_names(theirs):
            with warnings.catch_warnings(record=True) as django_caught:
                warnings.simplefilter("always")
                getattr(theirs, name)
            with warnings.catch_warnings(record=True) as our_caught:
                warnings.simplefilter("always")
                if not hasattr(mine, name):
                    missing.append(name)
                    continue
            assert [str(w.message) for w in our_caught] == [
                str(w.message) for w in django_caught
            ], name
        assert missing == [], f"{ours} lacks {missing}"


# What a Django module imports for its own use is not part of its API: names
# imported from outside django.core.mail, and the deprecation plumbing.
_API_IMPORTS = {
    "django.core.mail.message": {
        "BadHeaderError",
        "DNS_NAME",
        "make_msgid",
        "utf8_charset",
        "utf8_charset_qp",
    },
}


def public_names(module):
    """
    Return the public names of one of Django's mail modules.

    ``__all__`` where there is one; plus whatever the module itself defines
    (classes, functions, constants), plus the names it re-exports on purpose.
    Constants that come from django.core.mail.deprecation are its plumbing.
    """
    plumbing = {
        name
        for name in dir(importlib.import_module("django.core.mail.deprecation"))
        if name.isupper()
    }
    names = set(getattr(module, "__all__", ()))
    names |= _API_IMPORTS.get(module.__name__, set())
    if module.__name__ == "django.core.mail":
        # django.core.checks.mail imports it from here.
        names.add("DEFAULT_MAILER_ALIAS")
    for name, value in vars(module).items():
        if name.startswith("_") or isinstance(value, types.ModuleType):
            continue
        defined_here = getattr(value, "__module__", None) == module.__name__
        constant = name.isupper() and name not in plumbing
        if defined_here or constant:
            names.add(name)
    return sorted(names)


class TestEdgeSemantics:
    def test_sent_using(self, legacy):
        with override_settings(MAILERS={"x": {"BACKEND": LOCMEM}}):
            mailers["x"].send_messages([EmailMessage(to=TO)])
        # Without MAILERS (and built directly), as Django 6.1: None.
        set_legacy(legacy, EMAIL_BACKEND=LOCMEM)
        mailers.default.send_messages([EmailMessage(to=TO)])
        with django_warning(GET_CONNECTION_WARNING):
            get_connection().send_messages([EmailMessage(to=TO)])
        locmem.EmailBackend().send_messages([EmailMessage(to=TO)])
        assert [m.sent_using for m in django_mail.outbox] == ["x", None, None, None]

    def test_fail_silently_option(self, tmp_path):
        # Documented for the SMTP, console and file backends only.
        with override_settings(
            MAILERS={
                "smtp": {"OPTIONS": {"host": "h", "fail_silently": True}},
                "console": {"BACKEND": CONSOLE, "OPTIONS": {"fail_silently": True}},
                "file": {
                    "BACKEND": FILEBASED,
                    "OPTIONS": {"file_path": tmp_path, "fail_silently": True},
                },
                "locmem": {"BACKEND": LOCMEM, "OPTIONS": {"fail_silently": True}},
            }
        ):
            for alias in ("smtp", "console", "file"):
                assert mailers[alias].fail_silently is True
            with raises(InvalidMailer, "MAILERS['locmem']: Unknown options"):
                mailers["locmem"]

    def test_legacy_get_connection_keyword_arguments(self, legacy):
        # Without MAILERS they go to the backend's constructor; one it
        # doesn't take is ignored (Django's own call, so without a warning).
        set_legacy(legacy, EMAIL_BACKEND=SMTP)
        with django_warning(GET_CONNECTION_WARNING):
            backend = get_connection(host="h.example.com", port=2525, colour="red")
        assert (backend.host, backend.port, backend.alias) == (
            "h.example.com",
            2525,
            None,
        )
        with django_warning(GET_CONNECTION_WARNING):
            backend = get_connection(LOCMEM, fail_silently=True)
        assert isinstance(backend, locmem.EmailBackend)

    def test_mailers_get_connection_keyword_arguments(self):
        # With MAILERS they extend the default mailer's OPTIONS, and ones
        # the backend doesn't take are ignored.
        with override_settings(MAILERS={"default": {"OPTIONS": {"host": "h"}}}):
            with django_warning(GET_CONNECTION_WARNING):
                backend = get_connection(fail_silently=True, port=2525, colour="red")
        assert (backend.host, backend.port, backend.fail_silently) == ("h", 2525, True)
        assert backend.alias == "default"

    def test_ssl_files_are_checked_when_opening(self, legacy, closed_port):
        set_legacy(
            legacy,
            EMAIL_BACKEND=SMTP,
            EMAIL_HOST="127.0.0.1",
            EMAIL_PORT=closed_port,
            EMAIL_USE_SSL=True,
            EMAIL_SSL_CERTFILE="/nonexistent/cert.pem",
            EMAIL_SSL_KEYFILE="/nonexistent/key.pem",
        )
        backend = mailers.default  # As Django 6.1: not checked yet.
        assert backend.ssl_certfile == "/nonexistent/cert.pem"
        with pytest.raises(FileNotFoundError):
            backend.open()

    def test_empty_email_host_user_disables_auth(self, legacy, smtp_server_factory):
        server = smtp_server_factory(auth=True, auth_require_tls=False)
        set_legacy(
            legacy,
            EMAIL_BACKEND=SMTP,
            EMAIL_HOST=server.host,
            EMAIL_PORT=server.port,
            EMAIL_HOST_USER="",
            EMAIL_HOST_PASSWORD="secret",
        )
        assert mailers.default.send_messages([EmailMessage(to=TO)]) == 1
        assert server.deliveries[0].session.auth_login is None


class TestDjangoStyle(SimpleTestCase):
    """A project's own tests, written with Django's assertions, pass on ours."""

    def test_assert_raises_message(self):
        with override_settings(MAILERS={"default": {"BACKEND": LOCMEM}}):
            with self.assertRaisesMessage(
                MailerDoesNotExist, "The mailer 'nope' is not configured."
            ):
                mailers["nope"]
            with self.assertRaisesMessage(ValueError, HEADER_INJECTION):
                send_mail("a\nb", "body", None, TO)

    def test_assert_warns_message(self):
        with override_settings(MAILERS={"default": {"BACKEND": LOCMEM}}):
            with self.assertWarnsMessage(
                RemovedInDjango2028Warning, GET_CONNECTION_WARNING
            ) as context:
                get_connection()
        self.assertEqual(context.filename, __file__)


@pytest.mark.skipif(not DJANGO_61, reason="compares with Django 6.1 itself")
class TestAgainstDjango61:
    """Django 6.1 raises and warns; ours must start with the same text."""

    @staticmethod
    def error(call):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                call()
            except Exception as exc:
                return exc
        raise AssertionError("no error")

    @staticmethod
    def warned(call):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with contextlib.suppress(Exception):
                call()
        return [(w.category, str(w.message)) for w in caught]

    def compare_errors(self, djangos_call, our_call):
        djangos, ours = self.error(djangos_call), self.error(our_call)
        assert isinstance(ours, type(djangos))
        # KeyError's str() quotes the message (Django's MailerDoesNotExist
        # is one); assertRaisesMessage looks for the text inside it.
        expected = djangos.args[0] if isinstance(djangos, KeyError) else str(djangos)
        assert str(ours).startswith(expected), (expected, str(ours))
        assert expected in str(ours)

    @pytest.mark.parametrize(
        "config",
        [
            {"BACKEND": CONSOLE, "OPTIONS": {"b": 1, "a": 2}},
            {"BACKEND": LOCMEM, "OPTIONS": {"fail_silently": True}},
            {"BACKEND": SMTP},
            {"BACKEND": FILEBASED},
            {"OPTIONS": {"host": "h", "use_ssl": True, "use_tls": True}},
            {"BACKEND": "no.such.Backend"},
            {"BACKEND": CONSOLE, "OPTIONS": {"alias": "y"}},
        ],
    )
    def test_mailer_errors(self, config):
        with override_settings(MAILERS={"x": config}):
            self.compare_errors(lambda: django_mail.mailers["x"], lambda: mailers["x"])
            self.compare_errors(
                lambda: django_mail.mailers["nope"], lambda: mailers["nope"]
            )

    def test_file_path_errors(self, tmp_path):
        (tmp_path / "file").write_text("")
        for path in (tmp_path / "file", tmp_path / "file" / "sub"):
            config = {"BACKEND": FILEBASED, "OPTIONS": {"file_path": path}}
            with override_settings(MAILERS={"x": config}):
                self.compare_errors(
                    lambda: django_mail.mailers["x"], lambda: mailers["x"]
                )

    def test_legacy_errors(self, legacy, tmp_path):
        (tmp_path / "file").write_text("")
        for values in (
            {"EMAIL_BACKEND": SMTP, "EMAIL_USE_TLS": True, "EMAIL_USE_SSL": True},
            {"EMAIL_BACKEND": FILEBASED},
            {"EMAIL_BACKEND": FILEBASED, "EMAIL_FILE_PATH": tmp_path / "file"},
            {"EMAIL_BACKEND": "no.such.Backend"},
        ):
            with override_settings():
                set_legacy(legacy, **values)
                self.compare_errors(
                    lambda: django_mail.mailers.default, lambda: mailers.default
                )

    def test_message_errors(self):
        cases = [
            lambda m: m.EmailMessage("a\nb", to=TO).message(),
            lambda m: m.EmailMessage(to=["a@example.com\nBcc: x"]).message(),
            lambda m: m.EmailMessage(to=TO).attach("f.txt"),
            lambda m: m.EmailMessage(to=TO).attach(email.message.MIMEPart(), "c"),
            lambda m: m.EmailMessage(to=TO).attach(MIMEText("x"), "c"),
            lambda m: m.EmailMultiAlternatives().attach_alternative(None, "text/html"),
            lambda m: m.EmailMessage(to="a@example.com"),
            lambda m: m.EmailMessage("S", "B", None, [], *[None] * 7),
            lambda m: m.EmailMessage("S", "B", None, [], [], bcc=[]),
            lambda m: m.send_mail("s", "b", None, TO, *[None] * 6),
        ]
        for case in cases:
            self.compare_errors(
                lambda case=case: case(django_mail),
                lambda case=case: case(django_mailkit),
            )

    def test_argument_errors(self):
        connection = mailers["other"]
        cases = [
            lambda m: m.send_mail(
                "s", "b", None, TO, connection=connection, fail_silently=True
            ),
            lambda m: m.send_mail(
                "s", "b", None, TO, connection=connection, auth_user="u"
            ),
            lambda m: m.send_mail(
                "s", "b", None, TO, using="other", connection=connection
            ),
            lambda m: m.send_mail(
                "s", "b", None, TO, using="other", fail_silently=True
            ),
            lambda m: m.send_mail("s", "b", None, TO, using="other", auth_password="p"),
            lambda m: m.mail_admins(
                "s", "b", connection=connection, fail_silently=True
            ),
            lambda m: m.EmailMessage(to=TO).send(fail_silently=True, using="other"),
            lambda m: m.get_connection(CONSOLE),
        ]
        for case in cases:
            self.compare_errors(
                lambda case=case: case(django_mail),
                lambda case=case: case(django_mailkit),
            )

    def test_staff_setting_errors(self):
        for value in (
            "a@example.com",
            ["a@example.com", 1],
            ["a@example.com", ("n", "a")],
        ):
            with override_settings(ADMINS=value):
                self.compare_errors(
                    lambda: django_mail.mail_admins("s", "b"),
                    lambda: mail_admins("s", "b"),
                )

    def test_warnings(self):
        connection = mailers["other"]
        cases = [
            lambda m: m.EmailMessage("s", "b", None, TO, [], None),
            lambda m: m.send_mail("s", "b", None, TO, False),
            lambda m: m.send_mail("s", "b", None, TO, fail_silently=True),
            lambda m: m.send_mail("s", "b", None, TO, auth_user="u"),
            lambda m: m.send_mail("s", "b", None, TO, connection=connection),
            lambda m: m.mail_managers("s", "b", connection=connection),
            lambda m: m.EmailMessage(to=TO).attach(MIMEText("x")),
            lambda m: m.get_connection(),
            lambda m: setattr(m.EmailMessage(), "connection", None),
            lambda m: m.EmailMessage().connection,
        ]
        for case in cases:
            djangos = self.warned(lambda case=case: case(django_mail))
            ours = self.warned(lambda case=case: case(django_mailkit))
            assert djangos, case
            assert [text for _, text in ours] == [text for _, text in djangos]
            for (theirs, _), (mine, _) in zip(djangos, ours, strict=True):
                assert issubclass(mine, theirs)

    def test_no_default_mailer_and_admins_pairs(self, legacy):
        for call in (lambda m: m.mailers.default, lambda m: m.get_connection()):
            ours = {
                text for _, text in self.warned(lambda call=call: call(django_mailkit))
            }
            assert ours == {
                text for _, text in self.warned(lambda call=call: call(django_mail))
            }
        with override_settings(ADMINS=[("n", "a@example.com")]):
            djangos = self.warned(lambda: django_mail.mail_admins("s", "b"))
            ours = self.warned(lambda: mail_admins("s", "b"))
        assert [t for _, t in ours] == [t for _, t in djangos]

    def test_direct_construction(self):
        from django.core.mail.backends import smtp as django_smtp

        assert [t for _, t in self.warned(lambda: smtp.EmailBackend(host="h"))] == [
            t for _, t in self.warned(lambda: django_smtp.EmailBackend(host="h"))
        ]


def test_marker_comments_name_djangos_warning():
    """Every deprecated line is marked the way Django marks its own."""
    package = Path(django_mailkit.__file__).parent
    for path in package.rglob("*.py"):
        assert "RemovedWithDjango2028" not in path.read_text(), path


def test_console_and_file_backends_take_djangos_positional_arguments(tmp_path):
    # Django's signatures: console (fail_silently, ...), file (fail_silently,
    # file_path, ...). Code written against them must build ours the same way.
    from django_mailkit.backends import console, filebased

    assert console.EmailBackend(True).fail_silently is True
    backend = filebased.EmailBackend(False, str(tmp_path / "mail"))
    assert backend.fail_silently is False
    assert backend.send_messages([EmailMessage("s", "b", to=["a@example.com"])]) == 1
    assert len(list((tmp_path / "mail").iterdir())) == 1


class TestFromReview:
    """Divergences found by replaying Django 6.1's own mail tests."""

    def test_a_get_connection_override_is_refused_not_bypassed(self):
        class Routed(EmailMessage):
            def get_connection(self, fail_silently=False):
                raise AssertionError("never called")

        with pytest.raises(AttributeError) as caught:
            Routed(to=TO).send()
        assert str(caught.value) == (
            "EmailMessage no longer supports the undocumented get_connection() method."
        )

    @override_settings(ADMINS=[], MANAGERS=[])
    def test_no_staff_builds_no_mailer(self):
        assert mail_admins("s", "m", using="no-such-mailer") == 0
        broken = {"default": {"OPTIONS": {"host": "h", "port": "smtp"}}}
        with override_settings(MAILERS=broken):
            assert mail_managers("s", "m") == 0
        # The argument checks still run, as in Django.
        with pytest.raises(TypeError, match="'connection' is not compatible"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                mail_admins("s", "m", using="default", connection=object())

    def test_mailer_does_not_exist_takes_the_alias_by_keyword_only(self):
        with pytest.raises(TypeError):
            MailerDoesNotExist("some other problem")
        assert str(MailerDoesNotExist(alias="x")).startswith(
            "The mailer 'x' is not configured."
        )

    def test_file_path_is_normalised_as_django_does(self, tmp_path):
        from django_mailkit.backends import filebased

        backend = filebased.EmailBackend(file_path=f"{tmp_path}/x/../y")
        assert backend.file_path == str(tmp_path / "y")

    def test_a_deprecated_import_warns_at_the_importing_line(self):
        def user_code():
            from django_mailkit import BadHeaderError  # noqa: F401

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            user_code()
        assert caught
        lines = {(w.filename, w.lineno) for w in caught}
        line = user_code.__code__.co_firstlineno + 1
        assert lines == {(__file__, line)}
