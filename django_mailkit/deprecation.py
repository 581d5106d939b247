"""
Deprecation machinery: one warning class, the messages, and two helpers.

django_mailkit offers Django 6.1's email API on every supported Django
version, so it deprecates what Django 6.1 deprecates, with the same advice, on
every version. Deprecated usages keep working until django_mailkit drops
support for the last Django version that still has them (Django 2028 removes
them). Each line to delete then carries a ``# RemovedWithDjango2028`` comment.
"""

from __future__ import annotations

import functools
import inspect
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

__all__ = ["MailkitDeprecationWarning"]


class MailkitDeprecationWarning(DeprecationWarning):
    """A django_mailkit feature that Django 6.1 deprecates was used."""


FAIL_SILENTLY_ARG = (
    "The 'fail_silently' argument is deprecated. Configure the mailer in "
    "MAILERS and send with using=..., handling errors where you send."
)
AUTH_ARGS = (
    "The 'auth_user' and 'auth_password' arguments are deprecated. Set the "
    "'username' and 'password' OPTIONS of a mailer in MAILERS instead."
)
CONNECTION_ARG = (
    "The 'connection' argument is deprecated. Switch to the 'using' argument "
    "with a MAILERS alias."
)
CONNECTION_ATTR = (
    "EmailMessage.connection is deprecated. Switch to "
    "EmailMessage.send(using=...) with a MAILERS alias."
)
GET_CONNECTION = (
    "get_connection() is deprecated. Use django_mailkit.mailers[alias] "
    "(mailers.default for the default mailer)."
)
MIMEBASE_ATTACHMENT = (
    "Attaching an email.mime.base.MIMEBase object is deprecated. Attach an "
    "email.message.MIMEPart instead."
)
ADDRESS_PAIRS = (
    "Using (name, address) pairs in the {setting} setting is deprecated. Use a "
    "list of address strings such as 'Name <address@example.com>'."
)
POSITIONAL_ARGS = (
    "Passing {names} to {func}() as positional arguments is deprecated. Pass "
    "them as keyword arguments."
)

_PACKAGE_DIR = str(Path(__file__).resolve().parent)
_F = TypeVar("_F", bound=Callable[..., Any])


def warn(message: str, *, internal_ok: bool = True) -> None:
    """
    Issue a MailkitDeprecationWarning attributed to the caller's code.

    Frames inside django_mailkit are skipped so the warning points at the
    line a user can change. With ``internal_ok``, nothing is issued when that
    caller is Django itself: Django's own code (e.g. Django 6.1's
    get_connection() building one of our backends) is not the user's to fix.
    """
    frame: FrameType | None = sys._getframe(1)
    # stacklevel=2 names warn()'s caller; each skipped frame adds one.
    level = 2
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame = frame.f_back
        level += 1
    if internal_ok and frame is not None:
        module = frame.f_globals.get("__name__", "")
        if module == "django" or module.startswith("django."):
            return
    warnings.warn(message, MailkitDeprecationWarning, stacklevel=level)


def keyword_only_after(*legacy_names: str) -> Callable[[_F], _F]:
    """
    Accept the parameters in ``legacy_names`` positionally, with a warning.

    Django 5.2 took these parameters positionally; Django 6.0 made them
    keyword-only (with a deprecation period). The wrapped function declares
    them keyword-only; this decorator maps surplus positional arguments onto
    them in the legacy order.
    """

    def decorator(func: _F) -> _F:
        params = inspect.signature(func).parameters.values()
        positional = sum(
            p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params
        )
        name = func.__qualname__.replace(".__init__", "")

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if len(args) > positional:
                extra = args[positional:]
                if len(extra) > len(legacy_names):
                    raise TypeError(
                        f"{name}() takes at most {positional + len(legacy_names)} "
                        f"positional arguments ({len(args)} given)."
                    )
                names = legacy_names[: len(extra)]
                for arg_name, value in zip(names, extra, strict=True):
                    if arg_name in kwargs:
                        raise TypeError(
                            f"{name}() got multiple values for argument {arg_name!r}."
                        )
                    kwargs[arg_name] = value
                warn(
                    POSITIONAL_ARGS.format(
                        names=", ".join(repr(n) for n in names), func=name
                    ),
                    internal_ok=False,
                )
                args = args[:positional]
            return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorator
