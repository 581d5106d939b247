"""In-memory backend: appends copies to ``django.core.mail.outbox`` (tests)."""

from __future__ import annotations

import copy
import email.policy
from typing import Any

from django.core import mail

from ..message import render
from .base import BaseEmailBackend

__all__ = ["EmailBackend"]


class EmailBackend(BaseEmailBackend):
    """
    Keep messages in ``django.core.mail.outbox`` instead of sending them.

    Each message is built first, so a message that could not be sent (an
    injected header, a malformed address) fails here too. The outbox gets a
    copy stamped with ``sent_using``: the mailer alias, or ``"default"`` for
    a backend built outside MAILERS.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not hasattr(mail, "outbox"):
            mail.outbox = []

    def deliver(self, message: Any) -> bool:
        """Validate the message and append a stamped copy to the outbox."""
        render(message, email.policy.default)
        # A message built with connection=<this backend> must not copy the
        # backend (its lock can't be copied): the memo maps it to itself.
        sent = copy.deepcopy(message, {id(self): self})
        sent.sent_using = self.alias if self.alias is not None else "default"
        if not hasattr(mail, "outbox"):
            mail.outbox = []
        mail.outbox.append(sent)
        return True
