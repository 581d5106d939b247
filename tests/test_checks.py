"""System checks for the mail configuration."""

import warnings

import django
import pytest
from django.conf import settings
from django.core.checks import Error, Warning
from django.core.checks.registry import registry
from django.test import override_settings

CONSOLE = "django_mailkit.backends.console.EmailBackend"
SMTP = "django_mailkit.backends.smtp.EmailBackend"
DJANGO_61 = django.VERSION >= (6, 1)


def mailkit_messages(deploy=False):
    """Run the checks django_mailkit registered (and only those)."""
    messages = []
    for check in registry.get_checks(include_deployment_checks=deploy):
        if check.__module__ == "django_mailkit.checks":
            messages.extend(check(app_configs=None))
    return messages


def ids(messages):
    return sorted(m.id for m in messages)


@pytest.fixture
def legacy():
    with override_settings():
        del settings.MAILERS
        yield settings


def set_legacy(**values):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"The EMAIL_\w+ setting is deprecated")
        for name, value in values.items():
            setattr(settings, name, value)


@pytest.fixture(autouse=True)
def bridge_configured(request):
    """On Django < 6.1, silence W003 (tested on its own) by configuring the bridge."""
    if DJANGO_61 or request.node.get_closest_marker("no_bridge"):
        yield
        return
    with override_settings(EMAIL_BACKEND="django_mailkit.backends.mailer.EmailBackend"):
        yield


def smtp(**options):
    return {"BACKEND": SMTP, "OPTIONS": {"host": "mail.example.com", **options}}


class TestMailers:
    def test_valid_configuration_is_silent(self):
        with override_settings(
            MAILERS={"default": smtp(), "bulk": {"BACKEND": CONSOLE}}
        ):
            assert mailkit_messages() == []

    def test_missing_default(self):
        with override_settings(MAILERS={"bulk": smtp()}):
            messages = mailkit_messages()
        if DJANGO_61:
            assert messages == []  # Django reports it as mail.W001.
        else:
            assert ids(messages) == ["django_mailkit.W001"]
            assert isinstance(messages[0], Warning)

    @pytest.mark.parametrize(
        "config, check_id, text",
        [
            ({"BACKEND": "no.such.Backend"}, "E003", "Could not find BACKEND"),
            (smtp(use_tls=True, use_ssl=True), "E004", "OPTIONS are incompatible"),
            (
                {"BACKEND": "django_mailkit.backends.filebased.EmailBackend"},
                "E005",
                "file_path",
            ),
            (smtp(colour="red"), "E006", "Unknown options 'colour'"),
            (smtp(port="nope"), "E002", "port"),
            ({"BACKEND": CONSOLE, "EXTRA": 1}, "E002", "unknown keys 'EXTRA'"),
        ],
    )
    def test_misconfiguration(self, config, check_id, text):
        with override_settings(MAILERS={"default": smtp(), "broken": config}):
            messages = mailkit_messages()
        assert ids(messages) == [f"django_mailkit.{check_id}"]
        assert isinstance(messages[0], Error)
        assert messages[0].msg.startswith("MAILERS['broken']")
        assert text in messages[0].msg

    def test_every_broken_mailer_is_reported(self):
        with override_settings(
            MAILERS={
                "default": smtp(use_ssl=True, use_tls=True),
                "other": {"BACKEND": "x.Y"},
            }
        ):
            assert ids(mailkit_messages()) == [
                "django_mailkit.E003",
                "django_mailkit.E004",
            ]


class TestLegacy:
    def test_tls_and_ssl(self, legacy):
        set_legacy(EMAIL_BACKEND=SMTP, EMAIL_USE_TLS=True, EMAIL_USE_SSL=True)
        messages = mailkit_messages()
        assert ids(messages) == ["django_mailkit.E004"]
        assert messages[0].msg.startswith("EMAIL_USE_TLS/EMAIL_USE_SSL are mutually")

    def test_file_backend_without_path(self, legacy):
        set_legacy(EMAIL_BACKEND="django.core.mail.backends.filebased.EmailBackend")
        messages = mailkit_messages()
        assert ids(messages) == ["django_mailkit.E005"]
        assert messages[0].msg.startswith("The EMAIL_FILE_PATH setting must be set")


class TestStaffSettings:
    @pytest.mark.parametrize("setting", ["ADMINS", "MANAGERS"])
    @pytest.mark.parametrize(
        "value, text",
        [
            ("ops@example.com", "It is a str"),
            ([("a", "b", "c")], "index 0"),
            (["ok@example.com", "not an address <<"], "Invalid address"),
            (["a@example.com\nBcc: x@example.com"], "linefeed or carriage return"),
        ],
    )
    def test_malformed(self, setting, value, text):
        with override_settings(**{setting: value}):
            messages = mailkit_messages()
        assert ids(messages) == ["django_mailkit.E007"]
        assert messages[0].msg.startswith(f"{setting}:")
        assert text in messages[0].msg

    def test_well_formed(self):
        with override_settings(ADMINS=["A <a@example.com>"], MANAGERS=[]):
            assert mailkit_messages() == []


class TestDeploy:
    @pytest.mark.parametrize("name", ["console", "locmem", "dummy"])
    def test_development_backend_as_default(self, name):
        with override_settings(
            MAILERS={
                "default": {"BACKEND": f"django_mailkit.backends.{name}.EmailBackend"}
            }
        ):
            assert mailkit_messages() == []
            messages = mailkit_messages(deploy=True)
        assert ids(messages) == ["django_mailkit.W002"]
        assert name in messages[0].msg

    def test_smtp_default_is_fine(self):
        with override_settings(MAILERS={"default": smtp()}):
            assert mailkit_messages(deploy=True) == []

    def test_development_backend_on_another_alias_is_fine(self):
        with override_settings(
            MAILERS={"default": smtp(), "debug": {"BACKEND": CONSOLE}}
        ):
            assert mailkit_messages(deploy=True) == []

    def test_legacy_email_backend(self, legacy):
        set_legacy(EMAIL_BACKEND="django.core.mail.backends.console.EmailBackend")
        assert ids(mailkit_messages(deploy=True)) == ["django_mailkit.W002"]


@pytest.mark.skipif(DJANGO_61, reason="Django 6.1 reads MAILERS itself")
@pytest.mark.no_bridge
class TestDjangoMailBypass:
    def test_warns_when_email_backend_is_not_the_bridge(self):
        with override_settings(EMAIL_BACKEND=SMTP):
            assert ids(mailkit_messages()) == ["django_mailkit.W003"]

    def test_bridge_configured(self):
        with override_settings(
            EMAIL_BACKEND="django_mailkit.backends.mailer.EmailBackend"
        ):
            assert mailkit_messages() == []


class TestOutboxTimeout:
    def outbox(self, **smtp_options):
        return override_settings(
            MAILERS={
                "default": {
                    "BACKEND": "django_mailkit.backends.outbox.EmailBackend",
                    "OPTIONS": {"deliver_using": "smtp"},
                },
                "smtp": smtp(**smtp_options),
            }
        )

    def test_no_timeout(self):
        with self.outbox():
            messages = mailkit_messages()
        assert ids(messages) == ["django_mailkit.W004"]
        assert "timeout=None" in messages[0].msg

    def test_timeout_too_close_to_the_lease(self):
        with (
            self.outbox(timeout=200),
            override_settings(MAILKIT={"LEASE_SECONDS": 300}),
        ):
            assert ids(mailkit_messages()) == ["django_mailkit.W004"]

    def test_short_timeout_is_fine(self):
        with self.outbox(timeout=30):
            assert mailkit_messages() == []
