"""
The sending functions: send_mail(), send_mass_mail(), mail_admins(),
mail_managers(), and the deprecated get_connection().
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from email.headerregistry import Address
from typing import Any

from django.conf import settings

from . import conf, deprecation
from .backends.base import BaseEmailBackend
from .handler import DEFAULT_MAILER_ALIAS, mailers, warn_if_no_default_mailer
from .message import EmailMessage, EmailMultiAlternatives

__all__ = [
    "get_connection",
    "mail_admins",
    "mail_managers",
    "send_mail",
    "send_mass_mail",
]


def backend_for(
    *,
    using: str | None = None,
    connection: BaseEmailBackend | None = None,
    fail_silently: bool = False,
    auth_user: str | None = None,
    auth_password: str | None = None,
    warn_connection: bool = True,
) -> BaseEmailBackend:
    """
    Return the backend a send call should use.

    ``using`` is the way forward; the other arguments are deprecated, each
    warned about here (``connection`` unless ``warn_connection`` is False:
    EmailMessage warned when it was given), and cannot be combined with it.
    Warnings and errors read as Django 6.1's.
    """
    # RemovedInDjango2028Warning: everything but `return mailers[using or
    # default]`.
    check_send_args(
        using=using,
        connection=connection,
        fail_silently=fail_silently,
        auth_user=auth_user,
        auth_password=auth_password,
        warn_connection=warn_connection,
    )
    if using is not None:
        return mailers[using]
    if connection is not None:
        return connection
    overrides: dict[str, Any] = {}
    if fail_silently:
        overrides["fail_silently"] = True
    if auth_user is not None:
        overrides["username"] = auth_user
    if auth_password is not None:
        overrides["password"] = auth_password
    return mailers.create(DEFAULT_MAILER_ALIAS, overrides=overrides or None)


def check_send_args(
    *,
    using: str | None,
    connection: BaseEmailBackend | None,
    fail_silently: bool,
    auth_user: str | None = None,
    auth_password: str | None = None,
    warn_connection: bool = True,
) -> None:
    """Warn about deprecated send arguments and refuse incompatible ones."""
    # RemovedInDjango2028Warning: this whole function.
    has_auth = auth_user is not None or auth_password is not None
    if fail_silently:
        deprecation.warn(deprecation.FAIL_SILENTLY_ARG)
    if has_auth:
        deprecation.warn(deprecation.AUTH_ARGS)
    if connection is not None and warn_connection:
        deprecation.warn(deprecation.CONNECTION_ARG)
    if using is not None:
        if connection is not None:
            raise TypeError("'connection' is not compatible with 'using'.")
        if fail_silently:
            raise TypeError("'fail_silently' is not compatible with 'using'.")
        if has_auth:
            raise TypeError(
                "'auth_user' and 'auth_password' are not compatible with 'using'. "
                "Set 'username' and 'password' OPTIONS in MAILERS instead."
            )
        return
    if connection is not None:
        if fail_silently:
            raise TypeError(
                "fail_silently cannot be used with a connection. "
                "Pass fail_silently to get_connection() instead."
            )
        if has_auth:
            raise TypeError(
                "auth_user and auth_password cannot be used with a connection. "
                "Pass auth_user and auth_password to get_connection() instead."
            )


def _send(messages: list[EmailMessage], **backend_args: Any) -> int:
    backend = backend_for(**backend_args)
    messages = [message for message in messages if message.recipients()]
    if not messages:
        return 0
    return backend.send_messages(messages) or 0


@deprecation.keyword_only_after(
    "fail_silently", "auth_user", "auth_password", "connection", "html_message"
)
def send_mail(
    subject: Any,
    message: Any,
    from_email: str | Address | None,
    recipient_list: Sequence[str | Address],
    *,
    fail_silently: bool = False,
    auth_user: str | None = None,
    auth_password: str | None = None,
    connection: BaseEmailBackend | None = None,
    html_message: Any = None,
    using: str | None = None,
) -> int:
    """
    Send one message to every address in ``recipient_list``; return 1 or 0.

    All recipients see each other in the To header. With ``html_message``
    the message is multipart/alternative, text and HTML.
    """
    mail = EmailMultiAlternatives(subject, message, from_email, recipient_list)
    if html_message:
        mail.attach_alternative(html_message, "text/html")
    return _send(
        [mail],
        using=using,
        connection=connection,
        fail_silently=fail_silently,
        auth_user=auth_user,
        auth_password=auth_password,
    )


@deprecation.keyword_only_after(
    "fail_silently", "auth_user", "auth_password", "connection"
)
def send_mass_mail(
    datatuple: Iterable[tuple[Any, Any, Any, Sequence[str | Address]]],
    *,
    fail_silently: bool = False,
    auth_user: str | None = None,
    auth_password: str | None = None,
    connection: BaseEmailBackend | None = None,
    using: str | None = None,
) -> int:
    """
    Send one message per ``(subject, message, from_email, recipient_list)``.

    All messages go over one connection. Return how many were sent.
    """
    messages = [
        EmailMessage(subject, body, sender, recipients)
        for subject, body, sender, recipients in datatuple
    ]
    return _send(
        messages,
        using=using,
        connection=connection,
        fail_silently=fail_silently,
        auth_user=auth_user,
        auth_password=auth_password,
    )


def _mail_staff(
    setting: str,
    subject: Any,
    message: Any,
    *,
    fail_silently: bool,
    connection: BaseEmailBackend | None,
    html_message: Any,
    using: str | None,
) -> int:
    recipients = conf.staff_addresses(setting)
    if not recipients:
        # As Django: the arguments are checked, but no mailer is built (an
        # unset or broken one must not fail a site without ADMINS).
        check_send_args(using=using, connection=connection, fail_silently=fail_silently)
        return 0
    mail = EmailMultiAlternatives(
        f"{settings.EMAIL_SUBJECT_PREFIX}{subject}",
        message,
        settings.SERVER_EMAIL,
        recipients,
    )
    if html_message:
        mail.attach_alternative(html_message, "text/html")
    return _send(
        [mail], using=using, connection=connection, fail_silently=fail_silently
    )


@deprecation.keyword_only_after("fail_silently", "connection", "html_message")
def mail_admins(
    subject: Any,
    message: Any,
    *,
    fail_silently: bool = False,
    connection: BaseEmailBackend | None = None,
    html_message: Any = None,
    using: str | None = None,
) -> int:
    """
    Send a message to the ADMINS; return 1 if sent (0 if ADMINS is empty).

    The subject gets EMAIL_SUBJECT_PREFIX and the sender is SERVER_EMAIL.
    """
    return _mail_staff(
        "ADMINS",
        subject,
        message,
        fail_silently=fail_silently,
        connection=connection,
        html_message=html_message,
        using=using,
    )


@deprecation.keyword_only_after("fail_silently", "connection", "html_message")
def mail_managers(
    subject: Any,
    message: Any,
    *,
    fail_silently: bool = False,
    connection: BaseEmailBackend | None = None,
    html_message: Any = None,
    using: str | None = None,
) -> int:
    """Send a message to the MANAGERS, as mail_admins() does to the ADMINS."""
    return _mail_staff(
        "MANAGERS",
        subject,
        message,
        fail_silently=fail_silently,
        connection=connection,
        html_message=html_message,
        using=using,
    )


# RemovedInDjango2028Warning: the whole function.
@deprecation.keyword_only_after("fail_silently")
def get_connection(
    backend: str | None = None, *, fail_silently: bool = False, **kwargs: Any
) -> BaseEmailBackend:
    """
    Return a backend instance (deprecated: use ``mailers[alias]``).

    With MAILERS defined, this builds the default mailer with ``kwargs``
    added to its OPTIONS, and refuses a ``backend`` path. Without MAILERS, it
    builds ``backend`` (default EMAIL_BACKEND) with ``kwargs``.
    """
    deprecation.warn(deprecation.GET_CONNECTION)
    warn_if_no_default_mailer()
    if fail_silently:
        kwargs["fail_silently"] = True
    if conf.mailers_setting() is not None:
        if backend is not None:
            raise RuntimeError(
                "get_connection(backend, ...) is not supported with MAILERS. "
                "Add a MAILERS entry for that backend and use mailers[alias]."
            )
        return mailers.create(DEFAULT_MAILER_ALIAS, overrides=kwargs or None)
    return mailers.create_legacy(backend, overrides=kwargs or None)
