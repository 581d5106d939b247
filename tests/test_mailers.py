"""The mailer registry (``mailers``), get_connection() and configuration errors."""

import warnings

import django
import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from django_mailkit import (
    InvalidMailer,
    MailerDoesNotExist,
    get_connection,
    mailers,
)
from django_mailkit.backends import console, dummy, filebased, locmem, smtp
from django_mailkit.deprecation import MailkitDeprecationWarning
from django_mailkit.handler import resolve_backend_path

SMTP = "django_mailkit.backends.smtp.EmailBackend"
CONSOLE = "django_mailkit.backends.console.EmailBackend"
LOCMEM = "django_mailkit.backends.locmem.EmailBackend"


def configured(**mailer_configs):
    return override_settings(MAILERS=mailer_configs)


@pytest.fixture
def legacy():
    """
    Settings without MAILERS: the legacy EMAIL_* settings apply.

    A fresh override_settings layer is dropped whole on exit, so restoring
    the EMAIL_* settings doesn't trigger Django 6.1's deprecation warnings.
    """
    with override_settings():
        del settings.MAILERS
        yield settings


def set_legacy(settings, **values):
    """Set EMAIL_* settings; Django 6.1 warns about each one, as it should."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"The EMAIL_\w+ setting is deprecated")
        for name, value in values.items():
            setattr(settings, name, value)


class TestRegistry:
    def test_each_lookup_builds_a_new_instance(self):
        with configured(default={"BACKEND": CONSOLE}):
            first, second = mailers["default"], mailers["default"]
        assert isinstance(first, console.EmailBackend)
        assert first is not second

    def test_alias_is_set_from_the_key(self):
        with configured(
            default={"BACKEND": CONSOLE},
            bulk={"BACKEND": SMTP, "OPTIONS": {"host": "h"}},
        ):
            assert mailers["bulk"].alias == "bulk"
            assert mailers.default.alias == "default"

    def test_mapping_protocol(self):
        with configured(default={"BACKEND": CONSOLE}, other={"BACKEND": CONSOLE}):
            assert list(mailers) == ["default", "other"]
            assert "other" in mailers
            assert "missing" not in mailers
            assert mailers.get("missing") is None
            sentinel = object()
            assert mailers.get("missing", sentinel) is sentinel
            assert isinstance(mailers.get("other"), console.EmailBackend)

    def test_missing_alias_is_a_key_error_naming_it(self):
        with configured(default={"BACKEND": CONSOLE}):
            with pytest.raises(KeyError) as info:
                mailers["nope"]
        assert isinstance(info.value, MailerDoesNotExist)
        assert isinstance(info.value, ImproperlyConfigured)
        assert str(info.value) == (
            "The mailer 'nope' is not configured. Configured mailers: 'default'."
        )

    def test_missing_default(self):
        with configured(other={"BACKEND": CONSOLE}):
            with pytest.raises(
                MailerDoesNotExist, match=r"^The mailer 'default' is not configured\."
            ):
                mailers.default

    @pytest.mark.skipif(django.VERSION < (6, 1), reason="Django 6.1 API")
    def test_errors_are_djangos_classes_too(self):
        from django.core import mail

        with configured(default={"BACKEND": CONSOLE}):
            with pytest.raises(mail.MailerDoesNotExist):
                mailers["nope"]
            with pytest.raises(mail.InvalidMailer):
                with configured(x={"BACKEND": "no.such.Backend"}):
                    mailers["x"]

    def test_backend_defaults_to_smtp(self):
        with configured(default={"OPTIONS": {"host": "mail.example.com"}}):
            backend = mailers.default
        assert type(backend) is smtp.EmailBackend
        assert backend.host == "mail.example.com"

    @pytest.mark.parametrize(
        "name, cls",
        [
            ("smtp", smtp.EmailBackend),
            ("console", console.EmailBackend),
            ("locmem", locmem.EmailBackend),
            ("dummy", dummy.EmailBackend),
            ("filebased", filebased.EmailBackend),
        ],
    )
    def test_django_builtin_paths_get_our_backends(self, name, cls, tmp_path):
        options = {"smtp": {"host": "h"}, "filebased": {"file_path": tmp_path}}
        path = f"django.core.mail.backends.{name}.EmailBackend"
        assert (
            resolve_backend_path(path) == f"django_mailkit.backends.{name}.EmailBackend"
        )
        with configured(default={"BACKEND": path, "OPTIONS": options.get(name, {})}):
            assert type(mailers.default) is cls

    def test_third_party_paths_are_untouched(self):
        path = "django.core.mail.backends.custom.EmailBackend"
        assert resolve_backend_path(path) == path
        assert (
            resolve_backend_path("tests.test_mailers.Other")
            == "tests.test_mailers.Other"
        )


class TestConfigurationErrors:
    @pytest.mark.parametrize(
        "config, message",
        [
            (
                {"BACKEND": "no.such.Backend"},
                r"Could not find BACKEND 'no.such.Backend': No module named 'no'",
            ),
            ({"BACKEND": CONSOLE, "OPTION": {}}, r"unknown keys 'OPTION'"),
            ({"BACKEND": CONSOLE, "OPTIONS": ["x"]}, r"'OPTIONS' must be a dict"),
            (
                {"BACKEND": CONSOLE, "OPTIONS": {"alias": "x"}},
                r"OPTIONS must not define 'alias'\.",
            ),
            (
                {"BACKEND": CONSOLE, "OPTIONS": {"colour": "red"}},
                r"Unknown options 'colour'\.",
            ),
            ({"BACKEND": SMTP}, r"^MAILERS\['broken'\]: OPTIONS must define 'host'\."),
            (
                {
                    "BACKEND": SMTP,
                    "OPTIONS": {"host": "h", "use_tls": True, "use_ssl": True},
                },
                r"The 'use_ssl' and 'use_tls' OPTIONS are incompatible\.",
            ),
            (
                {"BACKEND": SMTP, "OPTIONS": {"host": "h", "port": "smtp"}},
                r"\['port'\]",
            ),
            ({"BACKEND": SMTP, "OPTIONS": {"host": "h", "port": 70000}}, r"\['port'\]"),
            (
                {"BACKEND": SMTP, "OPTIONS": {"host": "h", "timeout": -1}},
                r"\['timeout'\]",
            ),
            (
                {
                    "BACKEND": SMTP,
                    "OPTIONS": {"host": "h", "ssl_certfile": "/nonexistent"},
                },
                r"\['ssl_certfile'\]: '/nonexistent' is not a readable file",
            ),
            ("smtp", r"must be a dict"),
        ],
    )
    def test_message_starts_with_the_key_at_fault(self, config, message):
        with configured(default={"BACKEND": CONSOLE}, broken=config):
            with pytest.raises(InvalidMailer, match=message) as info:
                mailers["broken"]
        assert str(info.value).startswith("MAILERS['broken']")

    def test_unknown_options_are_named_in_order(self):
        with configured(default={"BACKEND": CONSOLE, "OPTIONS": {"b": 1, "a": 2}}):
            # In the order given, as Django names them.
            with pytest.raises(InvalidMailer, match=r"Unknown options 'b', 'a'\."):
                mailers.default

    def test_mailers_must_be_a_dict(self):
        with override_settings(MAILERS=[("default", {})]):
            with pytest.raises(
                ImproperlyConfigured, match="MAILERS setting must be a dict"
            ):
                mailers.default

    def test_default_ports(self):
        cases = [({}, 25), ({"use_tls": True}, 587), ({"use_ssl": True}, 465)]
        for options, port in cases:
            with configured(
                default={"BACKEND": SMTP, "OPTIONS": {"host": "h", **options}}
            ):
                assert mailers.default.port == port
        with configured(
            default={"BACKEND": SMTP, "OPTIONS": {"host": "h", "port": "2525"}}
        ):
            assert mailers.default.port == 2525


class TestLegacySettings:
    def test_default_mailer_from_email_settings(self, legacy):
        set_legacy(
            legacy,
            EMAIL_BACKEND=SMTP,
            EMAIL_HOST="legacy.example.com",
            EMAIL_PORT=2525,
            EMAIL_HOST_USER="user",
            EMAIL_HOST_PASSWORD="secret",
            EMAIL_USE_TLS=True,
            EMAIL_TIMEOUT=7,
        )
        with warnings.catch_warnings():
            # Reading the legacy settings is django_mailkit's job: no warning.
            warnings.simplefilter("error")
            backend = mailers.default
        assert (backend.host, backend.port, backend.username, backend.password) == (
            "legacy.example.com",
            2525,
            "user",
            "secret",
        )
        assert backend.use_tls is True and backend.use_ssl is False
        assert backend.timeout == 7
        # As Django 6.1: built from the legacy settings, it has no alias.
        assert backend.alias is None
        assert list(mailers) == ["default"]
        assert "default" in mailers

    def test_only_default_exists(self, legacy):
        with pytest.raises(MailerDoesNotExist):
            mailers["notifications"]

    def test_legacy_error_is_djangos(self, legacy):
        set_legacy(legacy, EMAIL_BACKEND=SMTP, EMAIL_USE_TLS=True, EMAIL_USE_SSL=True)
        # Django raises ValueError here; ours is also an InvalidMailer.
        with pytest.raises(ValueError, match=r"^EMAIL_USE_TLS/EMAIL_USE_SSL are mut"):
            mailers.default
        with pytest.raises(InvalidMailer):
            mailers.default

    def test_file_backend_needs_email_file_path(self, legacy, tmp_path):
        set_legacy(
            legacy, EMAIL_BACKEND="django.core.mail.backends.filebased.EmailBackend"
        )
        with pytest.raises(
            InvalidMailer, match=r"^The EMAIL_FILE_PATH setting must be set"
        ):
            mailers.default
        set_legacy(legacy, EMAIL_FILE_PATH=str(tmp_path / "mail"))
        backend = mailers.default
        assert backend.file_path == str(tmp_path / "mail")
        assert (tmp_path / "mail").is_dir()

    def test_bad_email_backend_names_the_setting(self, legacy):
        set_legacy(legacy, EMAIL_BACKEND="no.such.Backend")
        # Django lets the ImportError through; ours is also an InvalidMailer.
        with pytest.raises(ImportError, match=r"^No module named 'no' \(.*EMAIL_BACK"):
            mailers.default
        with pytest.raises(InvalidMailer):
            mailers.default


class TestGetConnection:
    def test_deprecated(self):
        with pytest.warns(MailkitDeprecationWarning, match="get_connection"):
            backend = get_connection()
        assert backend.alias == "default"

    def test_kwargs_extend_the_default_mailer_options(self):
        with configured(
            default={"BACKEND": SMTP, "OPTIONS": {"host": "h", "port": 2525}}
        ):
            with pytest.warns(MailkitDeprecationWarning):
                backend = get_connection(fail_silently=True, timeout=3)
        assert (backend.host, backend.port, backend.timeout) == ("h", 2525, 3)
        assert backend.fail_silently is True

    def test_options_a_backend_does_not_take_are_ignored(self):
        with configured(default={"BACKEND": CONSOLE}):
            with pytest.warns(MailkitDeprecationWarning):
                backend = get_connection(fail_silently=True, username="u")
        assert isinstance(backend, console.EmailBackend)

    def test_backend_path_refused_with_mailers(self):
        with pytest.warns(MailkitDeprecationWarning):
            with pytest.raises(RuntimeError, match="not supported with MAILERS"):
                get_connection(CONSOLE)

    def test_backend_path_without_mailers(self, legacy):
        with pytest.warns(MailkitDeprecationWarning):
            backend = get_connection(CONSOLE)
        assert isinstance(backend, console.EmailBackend)
        with pytest.warns(MailkitDeprecationWarning):
            backend = get_connection(SMTP, host="explicit.example.com")
        assert backend.host == "explicit.example.com"

    def test_fail_silently_positional_is_deprecated_too(self, legacy):
        with pytest.warns(MailkitDeprecationWarning) as record:
            backend = get_connection(CONSOLE, True)
        assert backend.fail_silently is True
        messages = " ".join(str(w.message) for w in record)
        assert "'fail_silently'" in messages and "positional" in messages

    def test_warning_points_at_the_caller(self):
        with pytest.warns(MailkitDeprecationWarning) as record:
            get_connection()
        assert record[0].filename == __file__


class TestDirectConstruction:
    """Backends built directly (as Django's get_connection() does) read EMAIL_*."""

    def test_smtp_reads_legacy_settings(self, legacy):
        set_legacy(legacy, EMAIL_HOST="direct.example.com", EMAIL_PORT=1025)
        with pytest.warns(MailkitDeprecationWarning) as record:
            backend = smtp.EmailBackend()
        assert str(record[0].message) == (
            "Directly creating EmailBackend instances is deprecated. "
            "Use mail.mailers instead."
        )
        assert record[0].filename == __file__
        assert (backend.host, backend.port, backend.alias) == (
            "direct.example.com",
            1025,
            None,
        )

    def test_unknown_option_is_ignored_with_a_warning(self):
        # As Django 6.1 (Django 2028 makes it a TypeError).
        with pytest.warns(MailkitDeprecationWarning) as record:
            backend = console.EmailBackend(colour="red")
        assert str(record[0].message) == (
            "django_mailkit.backends.console.EmailBackend.__init__() does not "
            "support 'colour'. In Django 2028, BaseEmailBackend will raise a "
            "TypeError for unknown keyword arguments."
        )
        assert record[0].filename == __file__
        assert not hasattr(backend, "colour")

    @pytest.mark.skipif(
        django.VERSION < (6, 1), reason="Django 6.1 reads MAILERS itself"
    )
    def test_djangos_own_registry_builds_our_backends(self):
        from django.core import mail

        with configured(
            default={"BACKEND": SMTP, "OPTIONS": {"host": "h", "port": 2525}}
        ):
            backend = mail.mailers["default"]
        assert type(backend) is smtp.EmailBackend
        assert (backend.alias, backend.port) == ("default", 2525)
