"""
Settings access, read at call time so ``override_settings`` works.

Two kinds of settings are read here: Django's email settings (``MAILERS``, the
legacy ``EMAIL_*`` settings, ``ADMINS``/``MANAGERS``), and django_mailkit's
own options in the single ``MAILKIT`` dict, one getter per key with its
default beside it.
"""

from __future__ import annotations

import math
from typing import Any, TypeVar, overload

import django
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.utils.functional import Promise, empty

from . import deprecation

__all__ = [
    "legacy_setting",
    "mailers_setting",
    "staff_addresses",
]

#: The legacy settings that configure the default mailer when MAILERS is not
#: defined, with the backend option each one feeds.
LEGACY_SMTP_SETTINGS = {
    "host": "EMAIL_HOST",
    "port": "EMAIL_PORT",
    "username": "EMAIL_HOST_USER",
    "password": "EMAIL_HOST_PASSWORD",
    "use_tls": "EMAIL_USE_TLS",
    "use_ssl": "EMAIL_USE_SSL",
    "timeout": "EMAIL_TIMEOUT",
    "ssl_certfile": "EMAIL_SSL_CERTFILE",
    "ssl_keyfile": "EMAIL_SSL_KEYFILE",
}
LEGACY_FILE_SETTINGS = {"file_path": "EMAIL_FILE_PATH"}
#: Every setting Django 6.1 deprecates in favour of MAILERS.
DEPRECATED_SETTINGS = frozenset(
    {"EMAIL_BACKEND", *LEGACY_SMTP_SETTINGS.values(), *LEGACY_FILE_SETTINGS.values()}
)

_T = TypeVar("_T")


def _wrapped_settings() -> Any:
    # django-stubs' plugin types ``settings`` as Settings; it is the
    # LazySettings wrapper, which has these.
    if settings._wrapped is empty:  # type: ignore[misc]
        settings._setup()  # type: ignore[misc]
    return settings._wrapped  # type: ignore[misc]


def legacy_setting(name: str, default: Any = None) -> Any:
    """
    Return a legacy ``EMAIL_*`` setting (or ``default`` when it is unset).

    Django 6.1 warns on every read of these settings through
    ``django.conf.settings``. Supporting them is this app's job, not a use
    the project should be warned about, so they are read from the settings
    object behind the lazy proxy (which is also where ``override_settings``
    puts its values).
    """
    return getattr(_wrapped_settings(), name, default)


def mailers_setting() -> dict[str, dict[str, Any]] | None:
    """Return ``settings.MAILERS``, or None when the project doesn't define it."""
    value = getattr(settings, "MAILERS", None)
    if value is not None and not isinstance(value, dict):
        raise ImproperlyConfigured(
            f"The MAILERS setting must be a dict of mailer aliases, not "
            f"{type(value).__name__}."
        )
    return value


def staff_addresses(setting: str) -> list[str]:
    """
    Return the addresses in ``ADMINS`` or ``MANAGERS``, as Django 6.1 does.

    The setting is a list of address strings. Django 5.2's list of
    ``(name, address)`` pairs is still accepted (deprecated): as in Django,
    only the addresses are used. Anything else raises ImproperlyConfigured
    with Django's sentence, then what is wrong.
    """
    value = getattr(settings, setting)
    if not value:
        return []
    # RemovedInDjango2028Warning: the pairs.
    if isinstance(value, list | tuple) and all(
        isinstance(item, list | tuple) and len(item) == 2 for item in value
    ):
        # Django 5.2 documents the pairs (its own mail_admins() needs them),
        # so only warn where Django deprecates them.
        if django.VERSION >= (6, 0):
            deprecation.warn(deprecation.ADDRESS_PAIRS.format(setting=setting))
        value = [item[1] for item in value]
    must = f"The {setting} setting must be a list of email address strings."
    if not isinstance(value, list | tuple):
        raise ImproperlyConfigured(f"{must} It is a {type(value).__name__}.")
    for index, item in enumerate(value):
        if not isinstance(item, str | Promise):
            raise ImproperlyConfigured(f"{must} The item at index {index} is {item!r}.")
    return [str(item) for item in value]


# django_mailkit's own settings: one MAILKIT dict, one getter per key.


@overload
def _mailkit(key: str, default: _T, kind: type[_T]) -> _T: ...
@overload
def _mailkit(key: str, default: float, kind: tuple[type, ...]) -> float: ...
def _mailkit(key: str, default: object, kind: type | tuple[type, ...]) -> object:
    options = getattr(settings, "MAILKIT", None) or {}
    if not isinstance(options, dict):
        raise ImproperlyConfigured("The MAILKIT setting must be a dict.")
    value = options.get(key, default)
    if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
        raise ImproperlyConfigured(
            f"MAILKIT['{key}'] must be {_describe(kind)} (got {value!r})."
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise ImproperlyConfigured(
            f"MAILKIT['{key}'] must be a finite number (got {value!r})."
        )
    if kind is not bool and isinstance(value, int | float) and value < 0:
        raise ImproperlyConfigured(
            f"MAILKIT['{key}'] must not be negative (got {value!r})."
        )
    return value


def _describe(kind: type | tuple[type, ...]) -> str:
    if kind is bool:
        return "True or False"
    if kind is int:
        return "a whole number"
    if kind is str:
        return "a string"
    return "a number"


def max_attempts() -> int:
    """MAILKIT['MAX_ATTEMPTS']: delivery attempts before a message fails (5)."""
    return max(1, _mailkit("MAX_ATTEMPTS", 5, int))


def backoff_base() -> float:
    """MAILKIT['BACKOFF_BASE']: seconds before the first retry (60)."""
    return float(_mailkit("BACKOFF_BASE", 60, (int, float)))


def backoff_cap() -> float:
    """MAILKIT['BACKOFF_CAP']: the longest wait between attempts, seconds (3600)."""
    return float(_mailkit("BACKOFF_CAP", 3600, (int, float)))


def lease_seconds() -> float:
    """MAILKIT['LEASE_SECONDS']: how long a worker's claim lasts (300)."""
    value = float(_mailkit("LEASE_SECONDS", 300, (int, float)))
    if not value:
        raise ImproperlyConfigured("MAILKIT['LEASE_SECONDS'] must be more than 0.")
    return value


def batch_size() -> int:
    """MAILKIT['BATCH_SIZE']: messages a worker claims at once (100)."""
    return max(1, _mailkit("BATCH_SIZE", 100, int))


def record_group_size() -> int:
    """
    MAILKIT['RECORD_GROUP_SIZE']: a worker writes the outcomes of up to this
    many delivered messages in one statement (20); 1 writes each at once.
    """
    return max(1, _mailkit("RECORD_GROUP_SIZE", 20, int))


def record_group_seconds() -> float:
    """
    MAILKIT['RECORD_GROUP_SECONDS']: an outcome waits at most this long for
    the rest of its group before it is written (0.5).
    """
    return float(_mailkit("RECORD_GROUP_SECONDS", 0.5, (int, float)))


def retention_days() -> int:
    """MAILKIT['RETENTION_DAYS']: default age for ``mailkit_outbox purge`` (30)."""
    return _mailkit("RETENTION_DAYS", 30, int)


def use_tasks() -> bool:
    """MAILKIT['USE_TASKS']: enqueue a delivery task per message on commit (True)."""
    return _mailkit("USE_TASKS", True, bool)


def task_batch_size() -> int:
    """
    MAILKIT['TASK_BATCH_SIZE']: messages one delivery task delivers (20): the
    messages committed together go to one task per this many, and a task
    run by a task worker takes other due messages up to this many.
    """
    return max(1, _mailkit("TASK_BATCH_SIZE", 20, int))


def task_backend() -> str:
    """MAILKIT['TASK_BACKEND']: the TASKS alias delivery tasks go to ("default")."""
    return _mailkit("TASK_BACKEND", "default", str)


def unsubscribe_max_age_days() -> int:
    """MAILKIT['UNSUBSCRIBE_MAX_AGE_DAYS']: how long an unsubscribe link works (90)."""
    value = _mailkit("UNSUBSCRIBE_MAX_AGE_DAYS", 90, int)
    if not value:
        raise ImproperlyConfigured(
            "MAILKIT['UNSUBSCRIBE_MAX_AGE_DAYS'] must be more than 0."
        )
    return value
