"""
Exceptions, in two families.

Configuration errors (``InvalidMailer`` and ``MailerDoesNotExist``) are
``ImproperlyConfigured``; ``fail_silently`` never swallows them. On Django 6.1
they also subclass Django's classes of the same name, so code that catches
``django.core.mail.InvalidMailer`` catches ours.

Delivery errors raised by the SMTP backend are ``smtplib.SMTPException``
subclasses, so existing ``except smtplib.SMTPException`` code keeps working.
"""

from __future__ import annotations

import smtplib
from typing import Any

from django.core.exceptions import ImproperlyConfigured

try:
    from django.core.mail import InvalidMailer as _DjangoInvalidMailer
    from django.core.mail import MailerDoesNotExist as _DjangoMailerDoesNotExist
except ImportError:  # Django < 6.1
    _DjangoInvalidMailer = ImproperlyConfigured  # type: ignore[assignment,misc]
    _DjangoMailerDoesNotExist = KeyError  # type: ignore[assignment,misc]

__all__ = [
    "InvalidAddress",
    "InvalidMailer",
    "InvalidStoredMessage",
    "MailerDoesNotExist",
    "SMTPUTF8Unsupported",
]


class InvalidMailer(_DjangoInvalidMailer):
    """
    A mailer's configuration is wrong.

    As in Django, ``InvalidMailer(msg, alias=alias)`` reads
    ``MAILERS['alias']: msg``. Where Django raises, ``msg`` starts with
    Django's sentence and our detail follows it. django_mailkit's own checks
    (of values Django doesn't validate) name the option itself:
    ``MAILERS['alias']['OPTIONS']['port']: ...``, or the legacy ``EMAIL_*``
    setting the value came from.
    """

    def __init__(
        self,
        msg: str,
        *,
        alias: str | None = None,
        option: str | None = None,
        setting: str | None = None,
        code: str | None = None,
        at_option: bool = True,
    ) -> None:
        self.detail = msg
        #: What kind of mistake, for the system checks: "unknown_options",
        #: "backend_import", or None.
        self.code = code
        self.alias = alias
        #: The option at fault, if any (also when the message doesn't start
        #: with it).
        self.option = option
        where = None
        if setting is not None:
            where = setting
        elif alias is not None:
            where = f"MAILERS[{alias!r}]"
            if option is not None and at_option:
                where += f"['OPTIONS'][{option!r}]"
        elif option is not None and at_option:
            where = f"Email backend option {option!r}"
        Exception.__init__(self, msg if where is None else f"{where}: {msg}")

    def __str__(self) -> str:
        # KeyError (a base of MailerDoesNotExist) would repr() the message.
        return str(self.args[0])


class InvalidMailerValueError(InvalidMailer, ValueError):
    """An InvalidMailer where Django raises ValueError (legacy settings)."""


class InvalidMailerImportError(InvalidMailer, ImportError):
    """An InvalidMailer where Django lets the ImportError through."""


class InvalidMailerModuleNotFoundError(InvalidMailerImportError, ModuleNotFoundError):
    """An InvalidMailer where Django lets the ModuleNotFoundError through."""


class MailerDoesNotExist(InvalidMailer, _DjangoMailerDoesNotExist):
    """The alias is not defined in MAILERS. It is also a KeyError."""

    def __init__(
        self, *, alias: str | None = None, configured: list[str] | None = None
    ) -> None:
        # Keyword-only, as Django's, so that this error is never raised for
        # some other problem; the configured aliases follow Django's sentence.
        msg = f"The mailer '{alias}' is not configured."
        if configured is not None:
            listed = ", ".join(repr(name) for name in configured) or "none"
            msg += f" Configured mailers: {listed}."
        super().__init__(msg)
        self.alias = alias


class SMTPUTF8Unsupported(smtplib.SMTPNotSupportedError):
    """An address needs SMTPUTF8, but the server does not offer it."""

    def __init__(self, address: str) -> None:
        self.address = address
        super().__init__(
            f"The address {address!r} has a non-ASCII local part, which needs "
            "the SMTPUTF8 extension, but the SMTP server does not offer it."
        )


class InvalidStoredMessage(ValueError):
    """An outbox row holds something it can't be sent with (e.g. its envelope)."""

    def __init__(self, pk: object, problem: str) -> None:
        self.pk = pk
        super().__init__(f"Outbox message {pk}: {problem}")


class InvalidAddress(ValueError):
    """
    An address can't be used: it would be unsafe or wrong in a header or an
    SMTP command. A ``ValueError``, as Django raises for invalid addresses.
    """

    def __init__(self, address: Any, *, field: str, reason: str) -> None:
        self.address = address
        #: Where the address came from ("to", "from_email", "recipients", ...).
        self.field = field
        self.reason = reason
        super().__init__(f"Invalid address {address!r}: {reason} ({field}).")
