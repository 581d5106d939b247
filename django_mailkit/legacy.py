"""
Deprecated names that Django 6.1 still exports, importable from django_mailkit.

Code that imported these from ``django.core.mail`` (or ``.message``) keeps
working after switching its imports, with Django 6.1's warnings. They are
Django's own objects: on Django 6.0 and later Django's functions warn by
themselves; on Django 5.2 they are wrapped to warn as Django 6.1 does.

RemovedInDjango2028Warning: this entire module, and the ``__getattr__`` hooks
that import from it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import django
from django.core.mail import message as _django_message

from . import deprecation

__all__ = [
    "ADDRESS_HEADERS",
    "MIMEMixin",
    "RFC5322_EMAIL_LINE_LENGTH_LIMIT",
    "SafeMIMEMessage",
    "SafeMIMEMultipart",
    "SafeMIMEText",
    "forbid_multi_line_headers",
    "sanitize_address",
    "utf8_charset",
    "utf8_charset_qp",
]

ADDRESS_HEADERS = _django_message.ADDRESS_HEADERS
RFC5322_EMAIL_LINE_LENGTH_LIMIT = _django_message.RFC5322_EMAIL_LINE_LENGTH_LIMIT
utf8_charset = _django_message.utf8_charset
utf8_charset_qp = _django_message.utf8_charset_qp
MIMEMixin = _django_message.MIMEMixin
SafeMIMEMessage = _django_message.SafeMIMEMessage
SafeMIMEMultipart = _django_message.SafeMIMEMultipart
SafeMIMEText = _django_message.SafeMIMEText

forbid_multi_line_headers: Callable[..., Any]
sanitize_address: Callable[..., Any]
if django.VERSION >= (6, 0):
    # Django warns itself, with the same words.
    forbid_multi_line_headers = _django_message.forbid_multi_line_headers
    sanitize_address = _django_message.sanitize_address
else:

    def forbid_multi_line_headers(name: str, val: Any, encoding: Any) -> Any:
        """Forbid multi-line headers (deprecated: Python's email API does)."""
        deprecation.warn(deprecation.FORBID_MULTI_LINE_HEADERS)
        return _django_message.forbid_multi_line_headers(name, val, encoding)

    def sanitize_address(addr: Any, encoding: str) -> str:
        """Format an address (deprecated: use email.headerregistry.Address)."""
        deprecation.warn(deprecation.SANITIZE_ADDRESS)
        return _django_message.sanitize_address(addr, encoding)


#: What importing each name from the top-level package warns, as Django 6.1's
#: ``django.core.mail`` does.
ON_IMPORT = {
    "BadHeaderError": deprecation.BAD_HEADER_ERROR,
    "SafeMIMEText": deprecation.SAFE_MIME_TEXT,
    "SafeMIMEMultipart": deprecation.SAFE_MIME_MULTIPART,
}


def package_getattr(name: str) -> Any:
    """The top-level package's ``__getattr__``: deprecated names, with a warning."""
    try:
        message = ON_IMPORT[name]
    except KeyError:
        raise AttributeError(
            f"module 'django_mailkit' has no attribute {name!r}"
        ) from None
    deprecation.warn(message, internal_ok=False)
    if name == "BadHeaderError":
        from .message import BadHeaderError

        return BadHeaderError
    return globals()[name]


def message_getattr(name: str) -> Any:
    """``django_mailkit.message``'s ``__getattr__``: the legacy MIME helpers."""
    if name in __all__:
        return globals()[name]
    raise AttributeError(f"module 'django_mailkit.message' has no attribute {name!r}")
