"""
``SuppressionAdmin``: the suppression list, searchable, and "unsuppress".

The list is read here, never edited: entries come from the worker (a
permanent refusal), one-click unsubscribes and ``mailkit_suppressions
import``. Taking an address off the list is the "unsuppress" action, behind
its own permission (``unsuppress_suppression``), confirmed on an
intermediate page first, as ``delete_selected`` is. Django's own delete is
not offered: it would let the delete permission unsuppress.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.contrib.admin.utils import quote
from django.contrib.auth import get_permission_codename
from django.core.exceptions import ImproperlyConfigured, PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.html import format_html
from django.utils.http import urlencode
from django.utils.text import Truncator
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from ..models import RecipientStatus, Suppression
from ..suppression import normalise
from .legacy import OL_BREADCRUMBS

if TYPE_CHECKING:
    _ModelAdminBase = admin.ModelAdmin[Suppression]
else:
    _ModelAdminBase = admin.ModelAdmin

__all__ = ["SuppressionAdmin"]

#: How many entries the confirmation page lists (it counts the rest).
CONFIRM_LISTED = 100


class MailerScopeFilter(admin.SimpleListFilter):
    """By outbox mailer; "every mailer" for the global entries."""

    title = _("mailer")
    parameter_name = "mailer"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        # The configured outbox mailers, not the table's distinct values:
        # no index starts with mailer, and this runs on every list page.
        aliases = _outbox_aliases()
        chosen = self.value()
        if chosen and chosen != "-" and chosen not in aliases:
            aliases.append(chosen)  # (no longer configured, still chosen)
        return [("-", _("(every mailer)")), *((alias, alias) for alias in aliases)]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> Any:
        value = self.value()
        if value is None:
            return queryset
        return queryset.filter(mailer="" if value == "-" else value)


def _outbox_aliases() -> list[str]:
    """The aliases in MAILERS whose backend is the outbox, sorted."""
    from ..backends.outbox import EmailBackend as OutboxBackend
    from ..handler import mailers

    aliases = []
    for alias in mailers:
        try:
            backend = mailers[alias]
        except (ImproperlyConfigured, TypeError, ValueError):
            continue  # a bad mailer is the system checks' to report
        if isinstance(backend, OutboxBackend):
            aliases.append(alias)
    return sorted(aliases)


@admin.register(Suppression)
class SuppressionAdmin(_ModelAdminBase):
    # Few columns: the list must fit beside the filters at 1280 pixels. The
    # source and the whole reply are on each entry's page.
    list_display = ["address", "display_mailer", "display_reason", "display_created"]
    list_filter = [
        "reason",
        MailerScopeFilter,
        ("created_at", admin.DateFieldListFilter),
    ]
    search_fields = ["address"]
    search_help_text = _(
        "Part of an address (addresses are stored lower-cased, with the "
        "domain IDNA-encoded)."
    )
    ordering = ["-created_at", "-id"]
    list_per_page = 100
    show_full_result_count = False
    actions = ["unsuppress"]
    fields = readonly_fields = (
        "address",
        "display_mailer",
        "reason",
        "smtp_code",
        "smtp_reply",
        "source",
        "created_at",
    )
    confirm_template = "django_mailkit/admin/confirm_unsuppress.html"

    class Media:
        css = {"all": ["django_mailkit/admin.css"]}

    @admin.display(description=_("mailer"), ordering="mailer")
    def display_mailer(self, obj: Suppression) -> Any:
        return obj.mailer or _("(every mailer)")

    @admin.display(description=_("created"), ordering="created_at")
    def display_created(self, obj: Suppression) -> str:
        created = obj.created_at
        if timezone.is_aware(created):
            created = timezone.localtime(created)
        return date_format(created, "SHORT_DATETIME_FORMAT")

    @admin.display(description=_("reason"), ordering="reason")
    def display_reason(self, obj: Suppression) -> Any:
        """The reason, and the server's reply under it (shortened, whole on hover)."""
        if obj.smtp_code is None and not obj.smtp_reply:
            return obj.get_reason_display()
        return format_html(
            '{}<span class="mailkit-suppression-reply" title="{}"><code>{}</code> '
            "{}</span>",
            obj.get_reason_display(),
            obj.smtp_reply,
            obj.smtp_code or "",
            Truncator(obj.smtp_reply).chars(60),
        )

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
    ) -> tuple[QuerySet[Any], bool]:
        # "Ann <Ann@Example.com>" finds ann@example.com: search the stored form.
        try:
            search_term = normalise(search_term)
        except ValueError:
            search_term = search_term.strip().lower()
        return super().get_search_results(request, queryset, search_term)

    # Permissions: a record, read here; removal is "unsuppress" alone.

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_unsuppress_permission(self, request: HttpRequest) -> bool:
        codename = get_permission_codename("unsuppress", self.opts)
        return request.user.has_perm(f"{self.opts.app_label}.{codename}")

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        # Django answers an action it didn't offer this user with "No action
        # selected" (or ignores it): a forged POST gets 403 instead.
        if request.method == "POST":
            offered = self.get_actions(request)
            for name in request.POST.getlist("action"):
                if name and name not in offered:
                    raise PermissionDenied
        return super().changelist_view(request, extra_context)

    @admin.action(
        permissions=["unsuppress"],
        description=_("Unsuppress selected addresses (send to them again)"),
    )
    def unsuppress(
        self, request: HttpRequest, queryset: QuerySet[Any]
    ) -> HttpResponse | None:
        """Take the selected addresses off the list, once confirmed."""
        if not self.has_unsuppress_permission(request):
            raise PermissionDenied  # the action machinery checks it too
        if request.POST.get("post") != "yes":
            return self._confirm(request, queryset)
        removed = list(queryset)
        if removed:
            self.log_deletions(request, removed)  # type: ignore[arg-type]
            Suppression.objects.filter(pk__in=[obj.pk for obj in removed]).delete()
        self.message_user(
            request,
            ngettext(
                "Unsuppressed %(count)d address: it will be sent to again.",
                "Unsuppressed %(count)d addresses: they will be sent to again.",
                len(removed),
            )
            % {"count": len(removed)},
            messages.SUCCESS,
        )
        return None

    def _confirm(self, request: HttpRequest, queryset: QuerySet[Any]) -> HttpResponse:
        total = queryset.count()
        listed = list(queryset[:CONFIRM_LISTED])
        info = f"{self.admin_site.name}:{self.opts.app_label}_{self.opts.model_name}"
        context = {
            **self.admin_site.each_context(request),
            "title": ngettext(
                "Unsuppress %(count)d address?",
                "Unsuppress %(count)d addresses?",
                total,
            )
            % {"count": total},
            "subtitle": None,
            "opts": self.opts,
            "objects": [
                {"object": obj, "url": reverse(f"{info}_change", args=[quote(obj.pk)])}
                for obj in listed
            ],
            "total": total,
            "more": total - len(listed),
            "hidden": [
                (name, value)
                for name, values in request.POST.lists()
                if name not in ("csrfmiddlewaretoken", "post", "index")
                for value in values
            ],
            "back_url": request.get_full_path(),
            "ol_breadcrumbs": OL_BREADCRUMBS,
            "media": self.media,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, self.confirm_template, context)


def suppression_url(request: HttpRequest, recipient: Any, site: Any) -> str | None:
    """The list's entries for a suppressed recipient, if this user may see them."""
    if recipient.status != RecipientStatus.SUPPRESSED:
        return None
    if not request.user.has_perm(f"{Suppression._meta.app_label}.view_suppression"):
        return None
    try:
        address = normalise(recipient.address)
    except ValueError:
        return None
    info = f"{site.name}:{Suppression._meta.app_label}_suppression_changelist"
    return f"{reverse(info)}?{urlencode({'q': address})}"
