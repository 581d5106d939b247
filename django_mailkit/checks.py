"""
System checks for the mail configuration (ids ``django_mailkit.E…/W…``).

Each mailer is validated the way sending would build it, so a check error
and a send-time error say the same thing.
"""

from __future__ import annotations

from typing import Any

import django
from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning, register
from django.core.exceptions import ImproperlyConfigured

from . import conf
from .backends.base import BaseEmailBackend
from .exceptions import InvalidMailer
from .handler import DEFAULT_MAILER_ALIAS, mailers, resolve_backend_path
from .message import to_address

_DJANGO_61 = django.VERSION >= (6, 1)


def _classify(exc: InvalidMailer) -> str:
    """Return the check id for a configuration error."""
    if exc.option in {"use_tls", "use_ssl"}:
        return "django_mailkit.E004"
    if exc.option == "file_path":
        return "django_mailkit.E005"
    if exc.option == "dkim":
        # The DKIM key or settings: caught at startup, not at the first send.
        return "django_mailkit.E008"
    if exc.option in {"rate", "max_connections_total", "priority"}:
        # The outbox's scheduling: the shared limits and priorities.
        return "django_mailkit.E009"
    if exc.code == "unknown_options":
        return "django_mailkit.E006"
    if exc.code == "backend_import":
        return "django_mailkit.E003"
    return "django_mailkit.E002"


def _check_mailer(alias: str, build: Any) -> list[CheckMessage]:
    try:
        build()
    except InvalidMailer as exc:
        return [Error(str(exc), id=_classify(exc))]
    except (ImproperlyConfigured, TypeError, ValueError) as exc:
        return [
            Error(f"Mailer {alias!r} cannot be built: {exc}", id="django_mailkit.E002")
        ]
    return []


@register("mail")
def check_mailers(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Validate MAILERS (or the legacy EMAIL_* settings) mailer by mailer."""
    try:
        configs = conf.mailers_setting()
    except ImproperlyConfigured as exc:
        return [Error(str(exc), id="django_mailkit.E002")]
    if configs is None:
        return _check_mailer(
            DEFAULT_MAILER_ALIAS,
            mailers.create_legacy,
        )
    errors: list[CheckMessage] = []
    # Django 6.1 reports a missing default itself (mail.W001).
    if DEFAULT_MAILER_ALIAS not in configs and not _DJANGO_61:
        errors.append(
            Warning(
                "MAILERS has no 'default' entry: sending without using=... "
                "will fail with MailerDoesNotExist.",
                hint="Add a 'default' entry to MAILERS.",
                id="django_mailkit.W001",
            )
        )
    for alias in configs:
        errors.extend(_check_mailer(alias, lambda alias=alias: mailers[alias]))
    return errors


@register("mail")
def check_staff_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Validate ADMINS and MANAGERS address by address."""
    errors: list[CheckMessage] = []
    for setting in ("ADMINS", "MANAGERS"):
        try:
            addresses = conf.staff_addresses(setting)
            for address in addresses:
                to_address(address, field=setting)
        except (ImproperlyConfigured, ValueError) as exc:
            errors.append(
                Error(
                    f"{setting}: {exc}",
                    hint=f"{setting} is a list of address strings such as "
                    "'Ops Team <ops@example.com>'.",
                    id="django_mailkit.E007",
                )
            )
    return errors


@register("mail", deploy=True)
def check_default_mailer_delivers(
    app_configs: Any = None, **kwargs: Any
) -> list[CheckMessage]:
    """Warn when the default mailer is a development-only backend."""
    configs = conf.mailers_setting()
    if configs is None:
        path = conf.legacy_setting("EMAIL_BACKEND", "")
    elif isinstance(configs.get(DEFAULT_MAILER_ALIAS), dict):
        path = configs[DEFAULT_MAILER_ALIAS].get("BACKEND", "")
        if _DJANGO_61 and path.startswith("django.core.mail.backends."):
            return []  # Django 6.1 reports its own backends (mail.E001).
    else:
        return []
    try:
        backend_class = mailers.import_backend(path or "")
    except InvalidMailer:
        return []  # check_mailers() reports it.
    if not issubclass(backend_class, BaseEmailBackend) or backend_class.delivers_mail:
        return []
    return [
        Warning(
            f"The default mailer uses a development-only backend "
            f"({resolve_backend_path(path)}): no email will reach its recipients.",
            hint="Use the SMTP backend (or another delivering backend) in production.",
            id="django_mailkit.W002",
        )
    ]


@register("mail")
def check_django_mail_uses_mailers(
    app_configs: Any = None, **kwargs: Any
) -> list[CheckMessage]:
    """On Django < 6.1, warn when Django's own mail would bypass MAILERS."""
    if _DJANGO_61 or conf.mailers_setting() is None:
        return []
    # LazySettings has is_overridden(); the stubs' plugin types it as Settings.
    if settings.is_overridden("EMAIL_BACKEND") and (  # type: ignore[misc]
        conf.legacy_setting("EMAIL_BACKEND") == BRIDGE_BACKEND
    ):
        return []
    return [
        Warning(
            "MAILERS is defined, but this Django version only knows "
            "EMAIL_BACKEND: mail sent by Django itself (password resets, "
            "AdminEmailHandler, django.core.mail) does not use your mailers.",
            hint=f"Set EMAIL_BACKEND = {BRIDGE_BACKEND!r}.",
            id="django_mailkit.W003",
        )
    ]


BRIDGE_BACKEND = "django_mailkit.backends.mailer.EmailBackend"


@register("mail")
def check_outbox_timeouts(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Warn when an outbox delivers through SMTP with no timeout under the lease."""
    from .backends.outbox import EmailBackend as OutboxBackend
    from .backends.smtp import EmailBackend as SMTPBackend

    configs = conf.mailers_setting() or {}
    lease = conf.lease_seconds()
    warnings: list[CheckMessage] = []
    for alias in configs:
        try:
            outbox = mailers[alias]
            if not isinstance(outbox, OutboxBackend):
                continue
            transport = mailers[outbox.deliver_using]
        except (ImproperlyConfigured, TypeError, ValueError):
            continue  # check_mailers() reports it.
        if not isinstance(transport, SMTPBackend):
            continue
        if transport.timeout is None or transport.timeout >= lease / 2:
            warnings.append(
                Warning(
                    f"MAILERS[{outbox.deliver_using!r}] delivers the outbox "
                    f"{alias!r} with timeout={transport.timeout!r}: a stalled "
                    f"server could hold a message past the {lease:g} s lease, "
                    "and another worker would then send it again.",
                    hint=f"Set its 'timeout' OPTION below {lease / 2:g} seconds "
                    "(or raise MAILKIT['LEASE_SECONDS']).",
                    id="django_mailkit.W004",
                )
            )
    return warnings


@register("mail")
def check_limits_apply(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Warn when a mailer's shared limits can never apply: no outbox uses it."""
    from .backends.outbox import EmailBackend as OutboxBackend

    configs = conf.mailers_setting() or {}
    limited: dict[str, list[str]] = {}
    delivered: set[str] = set()
    for alias in configs:
        try:
            backend = mailers[alias]
        except (ImproperlyConfigured, TypeError, ValueError):
            continue  # check_mailers() reports it.
        if isinstance(backend, OutboxBackend):
            delivered.add(backend.deliver_using)
        options = [
            option
            for option in ("rate", "max_connections_total")
            if getattr(backend, option, None) is not None
        ]
        if options:
            limited[alias] = options
    warnings: list[CheckMessage] = []
    batch, lease = conf.batch_size(), conf.lease_seconds()
    # A delivery task on a task worker takes up to TASK_BATCH_SIZE too.
    task_batch = conf.task_batch_size() if conf.use_tasks() else 0
    for alias in limited:
        rate = getattr(mailers[alias], "rate", None)
        if rate is None or alias not in delivered:
            continue
        # A worker waits for tokens for half its claim's lease at most.
        sent = rate.per_second * lease / 2
        if sent < batch:
            warnings.append(
                Warning(
                    f"MAILERS[{alias!r}]['OPTIONS']['rate'] is {rate}: about "
                    f"{sent:.0f} messages go out in half a lease ({lease / 2:g} s), "
                    f"fewer than a worker claims (MAILKIT['BATCH_SIZE'] = {batch}); "
                    "the rest of each batch goes back to the queue.",
                    hint=f"Set MAILKIT['BATCH_SIZE'] (or mailkit_worker --batch-size) "
                    f"to {max(1, int(sent))} or less.",
                    id="django_mailkit.W006",
                )
            )
        # Both, if both batches are too large: one fix at a time would
        # show the second warning only once the first is fixed.
        if sent < task_batch:
            warnings.append(
                Warning(
                    f"MAILERS[{alias!r}]['OPTIONS']['rate'] is {rate}: about "
                    f"{sent:.0f} messages go out in half a lease ({lease / 2:g} s), "
                    "fewer than a delivery task takes "
                    f"(MAILKIT['TASK_BATCH_SIZE'] = {task_batch}); the rest of "
                    "each task's batch goes back to the queue, for mailkit_worker.",
                    hint=f"Set MAILKIT['TASK_BATCH_SIZE'] to {max(1, int(sent))} "
                    "or less.",
                    id="django_mailkit.W006",
                )
            )
    return warnings + [
        Warning(
            f"MAILERS[{alias!r}] sets {' and '.join(map(repr, options))}, but no "
            "outbox mailer delivers through it: the limits apply to outbox "
            "delivery only, and a direct send does not wait for them.",
            hint=f"Send through an outbox mailer with deliver_using={alias!r}.",
            id="django_mailkit.W005",
        )
        for alias, options in limited.items()
        if alias not in delivered
    ]
