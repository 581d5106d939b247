"""
The outbox in Django's admin.

``OutboxMessageAdmin`` is registered on the default admin site. The outbox
is a record: messages are never edited here. Operations are admin actions,
each behind its own permission (``resend_outboxmessage``,
``requeue_outboxmessage``, ``cancel_outboxmessage``); on Django 6.1 they are
also on the message page as change-form actions, and on older versions the
message page posts to one small view that runs the same action. Reading a
message's bodies, previews and downloads needs the view permission; the
"Send test email" page needs ``send_test_email``.

The changelist is built for large tables: no per-row queries, no counting
of the whole table (see ``OutboxPaginator``), filters that need no query to
list their choices, and a search that uses the indexes for addresses and
Message-IDs.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from functools import partial
from typing import Any
from urllib.parse import urlencode

import django
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.admin.utils import quote, unquote
from django.contrib.admin.views.main import ChangeList
from django.contrib.auth import get_permission_codename
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db import connections, router, transaction
from django.db.models import Count, Q, QuerySet
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
    HttpResponseNotAllowed,
    HttpResponseRedirect,
)
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.functional import cached_property
from django.utils.html import format_html
from django.utils.text import smart_split, unescape_string_literal
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext, ngettext_lazy
from django.views.decorators.clickjacking import xframe_options_sameorigin

from .admin_views import (
    StoredMessage,
    eml_response,
    part_response,
    preview_response,
    send_test_email,
)
from .conf import mailers_setting
from .forms import SendTestEmailForm
from .handler import mailers
from .models import (
    FINAL_STATUSES,
    OutboxMessage,
    Recipient,
    Status,
    resend_messages,
)

__all__ = ["OutboxMessageAdmin", "OutboxPaginator", "resend_messages"]

#: Django 6.1 runs admin actions from the change form too.
CHANGE_FORM_ACTIONS = django.VERSION >= (6, 1)


class OutboxPaginator(Paginator):
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


def outbox_action(
    *, permission: str, description: str, description_plural: str
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare an action on the changelist and (Django 6.1) the change form."""
    if CHANGE_FORM_ACTIONS:
        from django.contrib.admin import ActionLocation

        kwargs: dict[str, Any] = {
            "description": description,
            "description_plural": description_plural,
            "location": [ActionLocation.CHANGE_LIST, ActionLocation.CHANGE_FORM],
        }
    else:
        kwargs = {"description": description_plural}

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        func = admin.action(permissions=[permission], **kwargs)(func)
        func.singular_description = description  # the legacy change-page button
        return func

    return decorate


#: The actions that apply to one message, with the statuses they apply to
#: (the buttons on the message page before Django 6.1).
OBJECT_ACTIONS = {
    "resend": FINAL_STATUSES,
    "requeue": frozenset({Status.FAILED, Status.PARTIAL}),
    "cancel": frozenset({Status.QUEUED}),
}


@admin.register(OutboxMessage)
class OutboxMessageAdmin(admin.ModelAdmin):
    list_display = [
        "display_subject",
        "display_recipients",
        "mailer",
        "display_status",
        "attempts",
        "display_created",
        "display_sent",
    ]
    list_display_links = ["display_subject"]
    list_filter = [
        "status",
        MailerFilter,
        ("created_at", admin.DateFieldListFilter),
    ]
    # The default search is replaced (get_search_results); this shows the box.
    search_fields = ["subject"]
    search_help_text = _(
        "Words in the subject, a whole recipient address, or a Message-ID."
    )
    ordering = ["-created_at", "-id"]
    # Only what an index orders: sorting a large table otherwise is a full sort.
    sortable_by = ["display_created"]
    list_per_page = 50
    paginator = OutboxPaginator
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    actions = ["resend", "requeue", "cancel"]
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "display_status",
                    "subject",
                    "from_email",
                    "display_envelope",
                    "message_id",
                    "mailer",
                    "attempts",
                    "created_at",
                    "sent_at",
                    "last_error",
                ]
            },
        ),
        (
            _("Delivery details"),
            {
                "classes": ["collapse"],
                "fields": [
                    "queued_via",
                    "next_attempt_at",
                    "claimed_by",
                    "lease_expires_at",
                    "updated_at",
                ],
            },
        ),
    ]
    readonly_fields = [
        field for _name, options in fieldsets for field in options["fields"]
    ]
    change_list_template = "django_mailkit/admin/change_list.html"
    change_form_template = "django_mailkit/admin/change_form.html"
    send_test_email_template = "django_mailkit/admin/send_test_email.html"

    class Media:
        css = {"all": ["django_mailkit/admin.css"]}

    # Columns.

    @admin.display(description=_("subject"))
    def display_subject(self, obj: OutboxMessage) -> str:
        return obj.subject or _("(no subject)")

    @admin.display(description=_("recipients"))
    def display_recipients(self, obj: OutboxMessage) -> str:
        # The envelope is on the row itself: no query per row.
        shown, rest = obj.recipients[:3], len(obj.recipients) - 3
        text = ", ".join(shown)
        if rest > 0:
            text += " " + ngettext("and %d more", "and %d more", rest) % rest
        return text

    @admin.display(description=_("created"), ordering="created_at")
    def display_created(self, obj: OutboxMessage) -> str:
        return _short_datetime(obj.created_at)

    @admin.display(description=_("sent"))
    def display_sent(self, obj: OutboxMessage) -> str | None:
        return _short_datetime(obj.sent_at) if obj.sent_at else None

    @admin.display(description=_("envelope recipients"))
    def display_envelope(self, obj: OutboxMessage) -> str:
        return ", ".join(obj.recipients)

    @admin.display(description=_("status"))
    def display_status(self, obj: OutboxMessage) -> str:
        return format_html(
            '<span class="mailkit-status mailkit-status-{}">{}</span>',
            obj.status,
            obj.get_status_display(),
        )

    # Queries.

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return OutboxChangeList

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
    ) -> tuple[QuerySet[Any], bool]:
        """
        Match every word: in the subject, or as a whole address or Message-ID.

        Addresses and Message-IDs are matched exactly (the domain of an
        address case-insensitively), so that the indexes answer them on a
        table of millions of messages.
        """
        for word in smart_split(search_term):
            if word[:1] in "\"'" and word[-1:] == word[:1] and len(word) > 1:
                word = unescape_string_literal(word)
            if not word:
                continue
            condition = Q(subject__icontains=word)
            if "@" in word:
                bare = word.strip("<>")
                local, _at, domain = bare.rpartition("@")
                addresses = {bare, f"{local}@{domain.lower()}", bare.lower()}
                condition |= Q(message_id__in=[f"<{bare}>", bare])
                condition |= Q(
                    pk__in=Recipient.objects.filter(address__in=addresses).values(
                        "message"
                    )
                )
            queryset = queryset.filter(condition)
        return queryset, False

    # Permissions: a record, not a form.

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def _has_permission(self, request: HttpRequest, codename: str) -> bool:
        return request.user.has_perm(f"{self.opts.app_label}.{codename}")

    def has_resend_permission(self, request: HttpRequest) -> bool:
        return self._has_permission(
            request, get_permission_codename("resend", self.opts)
        )

    def has_requeue_permission(self, request: HttpRequest) -> bool:
        return self._has_permission(
            request, get_permission_codename("requeue", self.opts)
        )

    def has_cancel_permission(self, request: HttpRequest) -> bool:
        return self._has_permission(
            request, get_permission_codename("cancel", self.opts)
        )

    def has_send_test_email_permission(self, request: HttpRequest) -> bool:
        return self._has_permission(request, "send_test_email")

    # Actions.

    @outbox_action(
        permission="resend",
        description=_("Resend"),
        description_plural=_("Resend selected %(verbose_name_plural)s"),
    )
    def resend(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        """Queue a copy of each finished message: the same bytes and envelope."""
        # Counted first: the selection may be a filter the action changes.
        total = queryset.count()
        created = resend_messages(queryset.filter(status__in=FINAL_STATUSES))
        skipped = total - len(created)
        if created:
            self._log(request, [old for old, _new in created], _("Resent."))
        if len(created) == 1:
            ((_old, new),) = created
            url = reverse(
                f"{self.admin_site.name}:{self.opts.app_label}_"
                f"{self.opts.model_name}_change",
                args=[quote(new)],
            )
            self.message_user(
                request,
                format_html('Resent as <a href="{}">message {}</a>.', url, new),
                messages.SUCCESS,
            )
        elif created:
            self.message_user(
                request,
                ngettext("Resent %d message.", "Resent %d messages.", len(created))
                % len(created),
                messages.SUCCESS,
            )
        if skipped:
            self.message_user(
                request,
                ngettext(
                    "%d message is still queued or being sent, so it was not resent.",
                    "%d messages are still queued or being sent, so they were not "
                    "resent.",
                    skipped,
                )
                % skipped,
                messages.WARNING,
            )

    @outbox_action(
        permission="requeue",
        description=_("Requeue"),
        description_plural=_("Requeue selected failed %(verbose_name_plural)s"),
    )
    def requeue(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        """Queue failed (or partially sent) messages again, right away."""
        self._apply(
            request,
            queryset,
            OBJECT_ACTIONS["requeue"],
            OutboxMessage.requeue,
            logged=_("Requeued."),
            done_text=ngettext_lazy(
                "Requeued %(count)d message.", "Requeued %(count)d messages.", "count"
            ),
            skipped_text=ngettext_lazy(
                "%(count)d message had not failed, so it was not requeued.",
                "%(count)d messages had not failed, so they were not requeued.",
                "count",
            ),
        )

    @outbox_action(
        permission="cancel",
        description=_("Cancel"),
        description_plural=_("Cancel selected queued %(verbose_name_plural)s"),
    )
    def cancel(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        """Cancel queued messages; those already being sent are left alone."""
        self._apply(
            request,
            queryset,
            [Status.QUEUED],
            OutboxMessage.cancel,
            logged=_("Cancelled."),
            done_text=ngettext_lazy(
                "Cancelled %(count)d message.", "Cancelled %(count)d messages.", "count"
            ),
            skipped_text=ngettext_lazy(
                "%(count)d message was not queued, so it was not cancelled.",
                "%(count)d messages were not queued, so they were not cancelled.",
                "count",
            ),
        )

    def _apply(
        self,
        request: HttpRequest,
        queryset: QuerySet[Any],
        statuses: Any,
        change: Callable[[Any], bool],
        *,
        logged: Any,
        done_text: Any,
        skipped_text: Any,
    ) -> list[int]:
        """Apply a conditional state change to the selection; report both counts."""
        # Counted first: the selection may be a filter the action changes.
        total = queryset.count()
        candidates = list(queryset.filter(status__in=statuses).only("pk", "status"))
        done = [message.pk for message in candidates if change(message)]
        skipped = total - len(done)
        if done:
            self._log(request, done, logged)
            self.message_user(
                request, done_text % {"count": len(done)}, messages.SUCCESS
            )
        if skipped:
            self.message_user(
                request, skipped_text % {"count": skipped}, messages.WARNING
            )
        return done

    def _log(self, request: HttpRequest, ids: list[int], message: str) -> None:
        LogEntry.objects.log_actions(
            user_id=request.user.pk,
            queryset=list(self.model.objects.filter(pk__in=ids).only("pk", "subject")),
            action_flag=CHANGE,
            change_message=str(message),
        )

    def response_action(
        self, request: HttpRequest, queryset: QuerySet[Any], *args: Any, **kwargs: Any
    ) -> HttpResponseBase | None:
        # Django answers a forged action (one not offered to this user) with
        # "No action selected"; say what it is: forbidden.
        for key, values in request.POST.lists():
            if key == "action" or key.endswith("-action"):
                for name in values:
                    if not self._may_run(request, name):
                        raise PermissionDenied
        return super().response_action(request, queryset, *args, **kwargs)

    def _may_run(self, request: HttpRequest, name: str) -> bool:
        """False if ``name`` is an action this user lacks the permission for."""
        action = self.get_action(name) if name else None
        if action is None:
            return True  # not an action: Django's own validation rejects it
        func = action[0] if isinstance(action, tuple) else action.func
        permissions = getattr(func, "allowed_permissions", None)
        if not permissions:
            return True
        return any(
            getattr(self, f"has_{permission}_permission")(request)
            for permission in permissions
        )

    def _object_actions(
        self, request: HttpRequest, obj: OutboxMessage | None = None
    ) -> dict[str, Callable[..., Any]]:
        """The one-message actions this user may run (on ``obj``'s status)."""
        allowed = {}
        for name, statuses in OBJECT_ACTIONS.items():
            if not self._may_run(request, name):
                continue
            if obj is not None and obj.status not in statuses:
                continue
            action = self.get_action(name)
            allowed[name] = action[0] if isinstance(action, tuple) else action.func
        return allowed

    # Pages.

    def get_urls(self) -> list[Any]:
        info = f"{self.opts.app_label}_{self.opts.model_name}"

        def wrap(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
            return self.admin_site.admin_view(view)

        urls = [
            path(
                "send-test-email/",
                wrap(self.send_test_email_view),
                name=f"{info}_send_test_email",
            ),
            path("<path:object_id>/eml/", wrap(self.eml_view), name=f"{info}_eml"),
            path(
                "<path:object_id>/preview/",
                wrap(xframe_options_sameorigin(self.preview_view)),
                name=f"{info}_preview",
            ),
            path(
                "<path:object_id>/parts/<int:index>/",
                wrap(self.part_view),
                name=f"{info}_part",
            ),
        ]
        if not CHANGE_FORM_ACTIONS:
            urls.append(
                path(
                    "<path:object_id>/actions/<str:action>/",
                    wrap(self.object_action_view),
                    name=f"{info}_object_action",
                )
            )
        return urls + super().get_urls()

    def _url(self, name: str, *args: Any) -> str:
        return reverse(
            f"{self.admin_site.name}:{self.opts.app_label}_{self.opts.model_name}_{name}",
            args=args,
        )

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        context = {
            # Evaluated when rendered, after Django's permission check.
            "mailkit_dashboard": partial(self.dashboard, request),
            "mailkit_send_test_email_url": (
                self._url("send_test_email")
                if self.has_send_test_email_permission(request)
                else None
            ),
            **(extra_context or {}),
        }
        return super().changelist_view(request, extra_context=context)

    def dashboard(self, request: HttpRequest) -> dict[str, Any]:
        """Messages created in the last 24 hours and 7 days, by status."""
        now = timezone.now()
        day, week = now - timedelta(days=1), now - timedelta(days=7)
        counts = {
            row["status"]: row
            for row in self.model.objects.filter(created_at__gte=week)
            .values("status")
            .annotate(week=Count("pk"), day=Count("pk", filter=Q(created_at__gte=day)))
            .order_by()
        }
        changelist = self._url("changelist")
        columns = []
        for status in Status:
            row = counts.get(status.value, {})
            columns.append(
                {
                    "status": status.value,
                    "label": status.label,
                    "day": row.get("day", 0),
                    "week": row.get("week", 0),
                    "day_url": _filter_url(changelist, status, day),
                    "week_url": _filter_url(changelist, status, week),
                }
            )
        return {
            "columns": columns,
            "day_total": sum(column["day"] for column in columns),
            "week_total": sum(column["week"] for column in columns),
        }

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: OutboxMessage | None = None,
    ) -> HttpResponse:
        if obj is not None:
            context["mailkit"] = self._message_context(request, obj)
        return super().render_change_form(request, context, add, change, form_url, obj)

    def _message_context(
        self, request: HttpRequest, obj: OutboxMessage
    ) -> dict[str, Any]:
        message = StoredMessage(bytes(obj.mime))
        remote_images = request.GET.get("remote_images") == "1"
        preview_url = self._url("preview", quote(obj.pk))
        pk = quote(obj.pk)
        attempts = [
            {
                "attempt": attempt,
                "recipients": [
                    {"address": address, "code": result[0], "reply": result[1]}
                    for address, result in (attempt.recipients or {}).items()
                ],
            }
            for attempt in obj.attempt_set.all()
        ]
        object_actions = []
        if not CHANGE_FORM_ACTIONS:
            for name, func in self._object_actions(request, obj).items():
                object_actions.append(
                    {
                        "name": name,
                        "label": func.singular_description,
                        "url": self._url("object_action", pk, name),
                    }
                )
        return {
            "message": message,
            "eml_url": self._url("eml", pk),
            "preview_url": preview_url + ("?remote_images=1" if remote_images else ""),
            "remote_images": remote_images,
            "parts": [
                {"part": part, "url": self._url("part", pk, part.index)}
                for part in message.parts
            ],
            "recipients": obj.recipient_set.all(),
            "attempts": attempts,
            "object_actions": object_actions,
        }

    def _get_viewable(self, request: HttpRequest, object_id: str) -> OutboxMessage:
        """The message, if this user may read it: permission first, then lookup."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        obj = self.get_object(request, unquote(object_id))
        if obj is None:
            raise Http404(_("No outbox message with this id."))
        if not self.has_view_permission(request, obj):
            raise PermissionDenied
        return obj

    def eml_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Download the message's exact bytes."""
        return eml_response(self._get_viewable(request, object_id))

    def preview_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Serve the HTML alternative alone, for the sandboxed iframe."""
        obj = self._get_viewable(request, object_id)
        response = preview_response(
            StoredMessage(bytes(obj.mime)),
            remote_images=request.GET.get("remote_images") == "1",
        )
        if response is None:
            raise Http404(_("This message has no HTML version."))
        return response

    def part_view(
        self, request: HttpRequest, object_id: str, index: int
    ) -> HttpResponse:
        """Download one attachment (or inline part)."""
        obj = self._get_viewable(request, object_id)
        response = part_response(StoredMessage(bytes(obj.mime)), index)
        if response is None:
            raise Http404(_("This message has no such part."))
        return response

    def object_action_view(
        self, request: HttpRequest, object_id: str, action: str
    ) -> HttpResponse:
        """Run one action on one message (the message page, before Django 6.1)."""
        if action not in OBJECT_ACTIONS:
            raise Http404(_("No such action."))
        if not self.has_view_permission(request) or not self._may_run(request, action):
            raise PermissionDenied
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        obj = self._get_viewable(request, object_id)
        func = self._object_actions(request)[action]
        with transaction.atomic(using=router.db_for_write(self.model)):
            response = func(self, request, self.get_queryset(request).filter(pk=obj.pk))
        if isinstance(response, HttpResponseBase):
            return response
        return HttpResponseRedirect(self._url("change", quote(obj.pk)))

    def send_test_email_view(self, request: HttpRequest) -> HttpResponse:
        """Send a test email now, through the chosen mailer; GET shows the form."""
        if not self.has_send_test_email_permission(request):
            raise PermissionDenied
        if request.method == "POST":
            form = SendTestEmailForm(request.POST)
            if form.is_valid():
                result = send_test_email(
                    form.cleaned_data["recipients"], using=form.cleaned_data["mailer"]
                )
                if result.ok:
                    text: Any = result.text
                    if result.outbox_id is not None and self.has_view_permission(
                        request
                    ):
                        text = format_html(
                            '{} <a href="{}">{}</a>',
                            result.text,
                            self._url("change", quote(result.outbox_id)),
                            _("Open it."),
                        )
                    self.message_user(request, text, result.level)
                    return HttpResponseRedirect(request.get_full_path())
                form.add_error(None, result.text)
        else:
            form = SendTestEmailForm()
        context = {
            **self.admin_site.each_context(request),
            "title": _("Send a test email"),
            "form": form,
            "adminform": helpers.AdminForm(
                form, [(None, {"fields": list(form.fields)})], {}, model_admin=self
            ),
            "opts": self.opts,
            "has_view_permission": self.has_view_permission(request),
            "media": self.media + form.media,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, self.send_test_email_template, context)


def _short_datetime(value: Any) -> str:
    return date_format(timezone.localtime(value), "SHORT_DATETIME_FORMAT")


def _filter_url(changelist: str, status: Status, since: Any) -> str:
    query = urlencode(
        {"status__exact": status.value, "created_at__gte": since.isoformat()}
    )
    return f"{changelist}?{query}"
