"""
The outbox in Django's admin.

``OutboxMessageAdmin`` and ``SuppressionAdmin`` are registered on the
default admin site when this package is imported (Django's admin
autodiscovery does that). The package holds one concern per module:

- ``options``: the ``ModelAdmin``: columns, search, permissions, actions;
- ``views``: the message's downloads and preview, and the test email page;
- ``display``: the stored message read for display, the preview's CSP and
  the response builders;
- ``changelist``: the paginator, filters and dashboard for large tables;
- ``suppressions``: the suppression list and its "unsuppress" action;
- ``legacy``: the message page's action buttons before Django 6.1, to delete
  once 6.1 is the oldest supported version.
"""

from .changelist import OutboxPaginator
from .options import OutboxMessageAdmin, resend_messages
from .suppressions import SuppressionAdmin

__all__ = [
    "OutboxMessageAdmin",
    "OutboxPaginator",
    "SuppressionAdmin",
    "resend_messages",
]
