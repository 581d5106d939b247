"""
Bridge backend: sends through a MAILERS alias.

Django 5.2 and 6.0 send their own mail (password resets, AdminEmailHandler,
``django.core.mail``) through ``EMAIL_BACKEND`` and know nothing of MAILERS.
``EMAIL_BACKEND = "django_mailkit.backends.mailer.EmailBackend"`` routes that
mail through ``mailers["default"]`` too. Django 6.1 reads MAILERS itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .base import BaseEmailBackend

__all__ = ["EmailBackend"]


class EmailBackend(BaseEmailBackend):
    """Delegate to the mailer ``using`` (default ``"default"``)."""

    def __init__(self, *, using: str = "default", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.using = using
        self._target: BaseEmailBackend | None = None

    def _build_target(self) -> BaseEmailBackend:
        from ..exceptions import InvalidMailer
        from ..handler import mailers

        overrides = {"fail_silently": True} if self.fail_silently else None
        target = mailers.create(self.using, overrides=overrides)
        if isinstance(target, EmailBackend):
            raise InvalidMailer(
                "the bridge backend cannot deliver through itself; give this "
                "mailer a delivering BACKEND.",
                alias=self.using,
            )
        return target

    def open(self) -> bool | None:
        """Open the target mailer's connection and keep it for later sends."""
        with self._lock:
            if self._target is not None:
                return False
            target = self._build_target()
            opened = target.open()
            self._target = target
            return None if opened is None else True

    def close(self) -> None:
        """Close the target mailer's connection."""
        with self._lock:
            target, self._target = self._target, None
            if target is not None:
                target.close()

    def send_messages(self, email_messages: Sequence[Any]) -> int:
        """Send through the open target, or through a new one."""
        if not email_messages:
            return 0
        with self._lock:
            target = self._target or self._build_target()
            return target.send_messages(email_messages) or 0
