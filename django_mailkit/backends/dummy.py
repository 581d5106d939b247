"""Dummy backend: accepts messages and does nothing with them."""

from __future__ import annotations

from typing import Any

from .base import BaseEmailBackend

__all__ = ["EmailBackend"]


class EmailBackend(BaseEmailBackend):
    """Discard every message, reporting each as sent (development)."""

    # As in Django 6.1, this backend takes no OPTIONS, not even fail_silently.
    supports_fail_silently = False

    def deliver(self, message: Any) -> bool:
        """Do nothing."""
        return True
