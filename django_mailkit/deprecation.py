"""
Deprecation machinery: one warning class, the messages, and two helpers.

django_mailkit offers Django 6.1's email API on every supported Django
version, so it deprecates what Django 6.1 deprecates, with Django's own
words, on every version. Deprecated usages keep working until django_mailkit
drops support for the last Django version that still has them (Django 2028
removes them). Each line to delete then carries a ``# RemovedInDjango2028``
comment.

The warning class is a subclass of Django's ``RemovedInDjango2028Warning``
where Django has that class (6.0 and later), so filters, ``assertWarns`` and
upgrade tools written for Django's warnings see ours the same way. Django 5.2
has no such class: there it is a ``DeprecationWarning``, and this module's
``RemovedInDjango2028Warning`` name is an alias of it, so a test can import
the category from one place on every version.
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

from django.utils import deprecation as _django_deprecation

__all__ = ["MailkitDeprecationWarning", "RemovedInDjango2028Warning"]

# Django 6.0+ (PendingDeprecationWarning); Django 5.2 has no such class.
_Category: type[Warning] = getattr(
    _django_deprecation, "RemovedInDjango2028Warning", DeprecationWarning
)


class MailkitDeprecationWarning(_Category):  # type: ignore[misc,valid-type]
    """A django_mailkit feature that Django 6.1 deprecates was used."""


#: The category to filter or assert on: Django's class where it exists,
#: MailkitDeprecationWarning (a DeprecationWarning) on Django 5.2.
RemovedInDjango2028Warning: type[Warning] = (
    MailkitDeprecationWarning if _Category is DeprecationWarning else _Category
)

# The messages: Django 6.1's text, word for word (users' tests assert them).

FAIL_SILENTLY_ARG = (  # RemovedInDjango2028
    "The 'fail_silently' argument is deprecated. See 'Migrating email to "
    "mailers' in Django's documentation for recommended replacements."
)
AUTH_ARGS = (  # RemovedInDjango2028
    "The 'auth_user' and 'auth_password' arguments are deprecated. Set "
    "'username' and 'password' OPTIONS in MAILERS instead."
)
CONNECTION_ARG = (  # RemovedInDjango2028
    "The 'connection' argument is deprecated. Switch to the 'using' argument "
    "with a MAILERS alias."
)
CONNECTION_ATTR_GET = (  # RemovedInDjango2028
    "The EmailMessage.connection attribute is deprecated."
)
CONNECTION_ATTR_SET = (  # RemovedInDjango2028
    "The EmailMessage.connection attribute is deprecated. Switch to "
    "EmailMessage.send(using=...) with a MAILERS alias."
)
GET_CONNECTION = (  # RemovedInDjango2028
    "get_connection() is deprecated. See 'Migrating email to mailers' "
    "in Django's documentation for recommended replacements."
)
NO_DEFAULT_MAILER = (  # RemovedInDjango2028
    "Django 2028 will not have a default mailer. Configure "
    "settings.MAILERS to avoid errors when sending email."
)
DIRECT_SMTP_BACKEND = (  # RemovedInDjango2028
    "Directly creating EmailBackend instances is deprecated. Use mail.mailers instead."
)
UNKNOWN_BACKEND_KWARGS = (  # RemovedInDjango2028
    "{class_name}.__init__() does not support {names}. In Django 2028, "
    "BaseEmailBackend will raise a TypeError for unknown keyword arguments."
)
MIMEBASE_ATTACHMENT = (  # RemovedInDjango2028
    "MIMEBase attachments are deprecated. Use an email.message.MIMEPart instead."
)
ADDRESS_PAIRS = (  # RemovedInDjango2028
    "Using (name, address) pairs in the {setting} setting is deprecated. "
    "Replace with a list of email address strings."
)
POSITIONAL_ARGS = (  # RemovedInDjango2028
    "Passing positional argument(s) {names} to {func}() is deprecated. "
    "Use keyword arguments instead."
)
BAD_HEADER_ERROR = (  # RemovedInDjango2028
    "BadHeaderError is deprecated. Replace with ValueError."
)
SAFE_MIME_TEXT = (  # RemovedInDjango2028
    "SafeMIMEText is deprecated. The return value of EmailMessage.message() "
    "is an email.message.EmailMessage."
)
SAFE_MIME_MULTIPART = (  # RemovedInDjango2028
    "SafeMIMEMultipart is deprecated. The return value of "
    "EmailMessage.message() is an email.message.EmailMessage."
)
FORBID_MULTI_LINE_HEADERS = (  # RemovedInDjango2028
    "The internal API forbid_multi_line_headers() is deprecated. Python's "
    "modern email API (with email.message.EmailMessage or "
    "email.policy.default) will reject multi-line headers."
)
SANITIZE_ADDRESS = (  # RemovedInDjango2028
    "The internal API sanitize_address() is deprecated. Python's modern email "
    "API (with email.message.EmailMessage or email.policy.default) will handle "
    "most required validation and encoding. Use Python's "
    "email.headerregistry.Address to construct formatted addresses from "
    "component parts."
)

_PACKAGE_DIR = str(Path(__file__).resolve().parent)
_SKIPPED = (_PACKAGE_DIR, "<frozen importlib")
_F = TypeVar("_F", bound=Callable[..., Any])


def warn(message: str, *, internal_ok: bool = True) -> None:
    """
    Issue a MailkitDeprecationWarning attributed to the caller's code.

    Frames inside django_mailkit are skipped so the warning points at the
    line a user can change (what ``skip_file_prefixes`` does on Python
    3.12+, done by hand for 3.11). With ``internal_ok``, nothing is issued
    when that caller is Django itself: Django's own code (e.g. Django 6.1's
    get_connection() building one of our backends) is not the user's to fix,
    and Django warns about the user's call itself.
    """
    frame: FrameType | None = sys._getframe(1)
    # stacklevel=2 names warn()'s caller; each skipped frame adds one.
    level = 2
    # (Importing a name through a module __getattr__ passes through
    # importlib's frames, which aren't the user's either; warnings.warn()
    # already leaves those out of its stacklevel count.)
    while frame is not None and frame.f_code.co_filename.startswith(_SKIPPED):
        if not frame.f_code.co_filename.startswith("<frozen importlib"):
            level += 1
        frame = frame.f_back
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
    them in the legacy order. Errors and the warning read as Django's
    ``deprecate_posargs`` words them.
    """

    def decorator(func: _F) -> _F:
        params = inspect.signature(func).parameters.values()
        positional = sum(
            p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params
        )
        maximum = positional + len(legacy_names)
        name = func.__name__
        if name == "__init__":
            # As Django: "ClassName()" rather than "__init__()".
            name = func.__qualname__.rsplit("<locals>.", 1)[-1]
            name = name.replace(".__init__", "")

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if len(args) > positional:
                if len(args) > maximum:
                    raise TypeError(
                        f"{name}() takes at most {maximum} positional argument(s) "
                        f"(including {len(legacy_names)} deprecated) but "
                        f"{len(args)} were given."
                    )
                extra = args[positional:]
                names = legacy_names[: len(extra)]
                conflicts = ", ".join(f"'{n}'" for n in names if n in kwargs)
                if conflicts:
                    raise TypeError(
                        f"{name}() got both deprecated positional and keyword "
                        f"argument values for {conflicts}."
                    )
                kwargs.update(zip(names, extra, strict=True))
                warn(
                    POSITIONAL_ARGS.format(
                        names=", ".join(f"'{n}'" for n in names), func=name
                    ),
                    internal_ok=False,
                )
                args = args[:positional]
            return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorator
