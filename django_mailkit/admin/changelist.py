"""
The outbox changelist, built for large tables: a paginator that never
counts a whole table, filters that need no query to list their choices, and
the dashboard of recent messages by status.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from django.contrib import admin
from django.contrib.admin.views.main import ChangeList
from django.core.paginator import Paginator
from django.db import connections
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.translation import gettext_lazy as _

from ..conf import mailers_setting
from ..handler import mailers
from ..models import OutboxMessage, Status

__all__ = [
    "MailerFilter",
    "OutboxChangeList",
    "OutboxPaginator",
    "dashboard",
    "estimated_row_count",
]


if TYPE_CHECKING:
    # Generic in django-stubs only: not subscriptable at run time.
    _PaginatorBase = Paginator[OutboxMessage]
else:
    _PaginatorBase = Paginator


class OutboxPaginator(_PaginatorBase):
    """
    A paginator that never counts a whole large table.

    Without filters, on PostgreSQL, a table larger than ``count_limit`` is
    counted by the planner's estimate (``pg_class.reltuples``). Otherwise
    rows are counted only up to ``count_limit``: past it, the count stops
    there (``count_is_capped``) and the changelist says "more than".
    """

    #: Rows counted at most.
    count_limit = 10_000
    count_is_estimate = False
    count_is_capped = False
    object_list: QuerySet[OutboxMessage]

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        if not queryset.query.where:
            estimate = estimated_row_count(queryset)
            if estimate is not None and estimate > self.count_limit:
                self.count_is_estimate = True
                return estimate
        counted = queryset.order_by()[: self.count_limit + 1].count()
        if counted > self.count_limit:
            self.count_is_capped = True
            return self.count_limit
        return counted


def estimated_row_count(queryset: QuerySet[Any]) -> int | None:
    """Return the database's estimate of the table's rows, if it keeps one."""
    connection = connections[queryset.db]
    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT reltuples FROM pg_class WHERE oid = to_regclass(%s)",
            [connection.ops.quote_name(queryset.model._meta.db_table)],
        )
        row = cursor.fetchone()
    # -1: never analyzed (PostgreSQL 14+); 0 may mean the same before.
    if row is None or row[0] is None or row[0] <= 0:
        return None
    return int(row[0])


class OutboxChangeList(ChangeList):
    """The changelist's rows leave the message bytes in the database."""

    def get_queryset(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        return super().get_queryset(request, *args, **kwargs).defer("mime")


class MailerFilter(admin.SimpleListFilter):
    """Filter by the delivering mailer, listing the configured aliases."""

    title = _("mailer")
    parameter_name = "mailer"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        # From the settings, not SELECT DISTINCT over the whole table.
        configs = mailers_setting() or {}
        aliases = [alias for alias in mailers if not _is_outbox(configs.get(alias))]
        current = self.value()
        if current and current not in aliases:
            aliases.append(current)
        return [(alias, alias) for alias in aliases]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> Any:
        if self.value():
            return queryset.filter(mailer=self.value())
        return queryset


def _is_outbox(config: Any) -> bool:
    backend = config.get("BACKEND", "") if isinstance(config, dict) else ""
    return str(backend).endswith(".outbox.EmailBackend")


def dashboard(queryset: QuerySet[Any], changelist_url: str) -> dict[str, Any]:
    """Messages created in the last 24 hours and 7 days, by status."""
    now = timezone.now()
    day, week = now - timedelta(days=1), now - timedelta(days=7)
    counts = {
        row["status"]: row
        for row in queryset.filter(created_at__gte=week)
        .values("status")
        .annotate(week=Count("pk"), day=Count("pk", filter=Q(created_at__gte=day)))
        .order_by()
    }
    columns = []
    for status in Status:
        row = counts.get(status.value, {})
        columns.append(
            {
                "status": status.value,
                "label": status.label,
                "day": row.get("day", 0),
                "week": row.get("week", 0),
                "day_url": _filter_url(changelist_url, status, day),
                "week_url": _filter_url(changelist_url, status, week),
            }
        )
    return {
        "columns": columns,
        "day_total": sum(column["day"] for column in columns),
        "week_total": sum(column["week"] for column in columns),
    }


def _filter_url(changelist: str, status: Status, since: Any) -> str:
    query = urlencode(
        {"status__exact": status.value, "created_at__gte": since.isoformat()}
    )
    return f"{changelist}?{query}"
