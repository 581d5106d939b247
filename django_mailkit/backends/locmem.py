"""In-memory backend: appends copies to ``django.core.mail.outbox`` (tests)."""

from __future__ import annotations

import copy
import email.policy
import sys
from typing import Any

import django
from django.core import mail

from .. import conf
from ..rendering import render
from .base import BaseEmailBackend

__all__ = ["EmailBackend"]

_DJANGO_61 = django.VERSION >= (6, 1)
DEFAULT_MAILER_ALIAS = "default"


class EmailBackend(BaseEmailBackend):
    """
    Keep messages in ``django.core.mail.outbox`` instead of sending them.

    Each message is built first, so a message that could not be sent (an
    injected header, a malformed address) fails here too. The outbox gets a
    copy stamped with ``sent_using``: the mailer alias, or None for a backend
    built outside MAILERS (from the legacy settings, or directly), as in
    Django 6.1.
    """

    # As in Django 6.1, this backend takes no OPTIONS, not even fail_silently.
    supports_fail_silently = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._sent_using = self.alias
        if self.alias is None and not _DJANGO_61 and _built_by_django():
            # Django 5.2/6.0's get_connection() building EMAIL_BACKEND (the
            # test environment's): with MAILERS defined, Django 6.1 sends
            # that mail through the default mailer.
            if conf.mailers_setting() is not None:
                self._sent_using = DEFAULT_MAILER_ALIAS
        if not hasattr(mail, "outbox"):
            mail.outbox = []

    def deliver(self, message: Any) -> bool:
        """Validate the message and append a stamped copy to the outbox."""
        render(message, email.policy.default)
        # A message built with connection=<this backend> must not copy the
        # backend (its lock can't be copied): the memo maps it to itself.
        sent = copy.deepcopy(message, {id(self): self})
        sent.sent_using = self._sent_using
        if not hasattr(mail, "outbox"):
            mail.outbox = []
        mail.outbox.append(sent)
        return True


def _built_by_django() -> bool:
    """Whether the code constructing the backend is Django's mail module."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_globals.get("__name__", "").startswith(
        "django_mailkit."
    ):
        frame = frame.f_back  # type: ignore[assignment]
    return frame is not None and frame.f_globals.get("__name__") == "django.core.mail"
