"""Dummy backend: accepts messages and does nothing with them."""

from __future__ import annotations

from typing import Any

from .base import BaseEmailBackend

__all__ = ["EmailBackend"]


class EmailBackend(BaseEmailBackend):
    """Discard every message, reporting each as sent (development)."""

    def deliver(self, message: Any) -> bool:
        """Do nothing."""
        return True
