"""
``OutboxMessageAdmin``: the outbox's columns, search, permissions and actions.

The outbox is a record: messages are never edited here. Operations are admin
actions, each behind its own permission (``resend_outboxmessage``,
``requeue_outboxmessage``, ``cancel_outboxmessage``); on Django 6.1 they are
also on the message page as change-form actions (before 6.1, see
``legacy.py``). Reading a message's bodies, previews and downloads needs the
view permission; the "Send test email" page needs ``send_test_email``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, cast

from django.contrib import admin, messages
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.admin.utils import quote
from django.contrib.admin.views.main import ChangeList
from django.contrib.auth import get_permission_codename
from django.core.exceptions import PermissionDenied
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.defaultfilters import filesizeformat
from django.urls import path, reverse
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.html import format_html, format_html_join
from django.utils.text import Truncator, smart_split, unescape_string_literal
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext, ngettext_lazy
from django.views.decorators.clickjacking import xframe_options_sameorigin

from .. import conf
from ..models import (
    FINAL_STATUSES,
    OutboxMessage,
    Recipient,
    Status,
    resend_messages,
)
from .changelist import MailerFilter, OutboxChangeList, OutboxPaginator, dashboard
from .display import (
    ParsedMessage,
    attempt_outcome,
    failure_summary,
    first_delivery,
    header_fields,
    when,
)
from .legacy import (
    CHANGE_FORM_ACTIONS,
    OBJECT_ACTIONS,
    TOOLS_IN_CONTENT,
    ObjectAction,
    ObjectActionsMixin,
)
from .suppressions import suppression_url
from .views import MessageViewsMixin

if TYPE_CHECKING:
    from django_stubs_ext import StrOrPromise

    # Generic in django-stubs only: not subscriptable at run time.
    _ModelAdminBase = admin.ModelAdmin[OutboxMessage]
else:
    _ModelAdminBase = admin.ModelAdmin

__all__ = ["OutboxMessageAdmin", "resend_messages"]

#: How much of a message's source the "Raw source" tab shows.
RAW_SOURCE_SHOWN = 64 * 1024
#: How much of a message's last error the changelist shows, under its status.
ERROR_COLUMN_CHARS = 80


def outbox_action(
    *,
    permission: str,
    description: StrOrPromise,
    description_plural: StrOrPromise,
) -> Callable[[Callable[..., Any]], ObjectAction]:
    """Declare an action on the changelist and (Django 6.1) the change form."""
    if CHANGE_FORM_ACTIONS:
        from django.contrib.admin import ActionLocation

        kwargs: dict[str, Any] = {
            "description": description,
            "description_plural": description_plural,
            "location": [ActionLocation.CHANGE_LIST, ActionLocation.CHANGE_FORM],
        }
    else:  # RemovedWithDjango61Minimum
        kwargs = {"description": description_plural}

    def decorate(func: Callable[..., Any]) -> ObjectAction:
        action = cast(
            ObjectAction, admin.action(permissions=[permission], **kwargs)(func)
        )
        action.singular_description = description  # RemovedWithDjango61Minimum
        return action

    return decorate


@admin.register(OutboxMessage)
class OutboxMessageAdmin(MessageViewsMixin, ObjectActionsMixin, _ModelAdminBase):
    list_display = [
        "display_subject",
        "display_recipients",
        "display_outcome",
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
        "Words in the subject, part of a recipient address (“frank” finds "
        "refused-frank@example.com), or a Message-ID."
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
                    "display_failure",
                    "subject",
                    "from_email",
                    "display_envelope",
                    "message_id",
                    "mailer",
                    "attempts",
                    "display_recoveries",
                    "display_size",
                    "display_created_at",
                    "display_sent_at",
                    "last_error",
                    "display_resent_from",
                    "display_resends",
                ]
            },
        ),
        (
            _("Delivery details"),
            {
                "classes": ["collapse"],
                "fields": [
                    "queued_via",
                    "priority",
                    "display_next_attempt_at",
                    "claimed_by",
                    "display_lease_expires_at",
                    "display_updated_at",
                ],
            },
        ),
    ]
    #: Fields that only mean something while a message is queued or being
    #: sent; a finished message hides them.
    lease_fields = frozenset(
        {"display_next_attempt_at", "claimed_by", "display_lease_expires_at"}
    )
    # Only names in these fieldsets (no tuples of names).
    readonly_fields = [
        field  # type: ignore[misc]
        for _name, options in fieldsets
        for field in options["fields"]
    ]
    change_list_template = "django_mailkit/admin/change_list.html"
    change_form_template = "django_mailkit/admin/change_form.html"

    class Media:
        css = {"all": ["django_mailkit/admin.css"]}

    # Columns.

    @admin.display(description=_("subject"))
    def display_subject(self, obj: OutboxMessage) -> StrOrPromise:
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

    @admin.display(description=_("status"))
    def display_outcome(self, obj: OutboxMessage) -> str:
        """
        The status, with the attempts it took when more than one, and for a
        failure its reason: shortened, whole on hover.
        """
        status = self.display_status(obj)
        if obj.attempts > 1:
            status = format_html(
                '{} <span class="mailkit-attempts-count">{}</span>',
                status,
                ngettext("%d attempt", "%d attempts", obj.attempts) % obj.attempts,
            )
        if not obj.last_error:
            return status
        return format_html(
            '{}<div class="mailkit-last-error" title="{}">{}</div>',
            status,
            obj.last_error,
            Truncator(" ".join(obj.last_error.split())).chars(ERROR_COLUMN_CHARS),
        )

    # The message page.

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        """The fields that mean something for ``obj`` in its current state."""
        hidden: set[str] = set()
        if obj is not None:
            if obj.status in FINAL_STATUSES:
                hidden |= self.lease_fields
            if obj.status not in (Status.FAILED, Status.PARTIAL, Status.SUPPRESSED):
                hidden.add("display_failure")
            if not obj.last_error:
                hidden.add("last_error")
            if not obj.recoveries:
                hidden.add("display_recoveries")
            if obj.resent_from_id is None:
                hidden.add("display_resent_from")
            if not obj.resends.exists():
                hidden.add("display_resends")
        return [
            (
                name,
                {
                    **options,
                    "fields": [f for f in options["fields"] if f not in hidden],
                },
            )
            for name, options in super().get_fieldsets(request, obj)
        ]

    @admin.display(description=_("size"))
    def display_size(self, obj: OutboxMessage) -> str:
        # Stored when queued; older messages are measured.
        size = obj.size if obj.size is not None else len(obj.mime)
        return filesizeformat(size)

    @admin.display(description=_("recovered"))
    def display_recoveries(self, obj: OutboxMessage) -> str:
        # Shown only when it happened (get_fieldsets()).
        return ngettext(
            "Once, from a worker that stopped (died, or stalled past its "
            "lease) while it held the message; sent alone since then.",
            "%(count)d times, from workers that stopped (died, or stalled "
            "past their lease) while they held the message; sent alone since "
            "then.",
            obj.recoveries,
        ) % {"count": obj.recoveries}

    @admin.display(description=_("created"))
    def display_created_at(self, obj: OutboxMessage) -> str:
        return when(obj.created_at)

    @admin.display(description=_("first delivered"))
    def display_sent_at(self, obj: OutboxMessage) -> str:
        # The first attempt a recipient accepted; sent_at may be a later one.
        return when(first_delivery(list(obj.attempt_set.all())) or obj.sent_at)

    @admin.display(description=_("updated"))
    def display_updated_at(self, obj: OutboxMessage) -> str:
        return when(obj.updated_at)

    @admin.display(description=_("next attempt"))
    def display_next_attempt_at(self, obj: OutboxMessage) -> str:
        return when(obj.next_attempt_at)

    @admin.display(description=_("lease expires"))
    def display_lease_expires_at(self, obj: OutboxMessage) -> str:
        return when(obj.lease_expires_at)

    @admin.display(description=_("why it failed"))
    def display_failure(self, obj: OutboxMessage) -> str:
        lines = failure_summary(
            obj,
            list(obj.recipient_set.all()),
            list(obj.attempt_set.all()),
            conf.max_attempts(),
        )
        return (
            format_html_join(
                "", '<p class="mailkit-failure">{}</p>', ((line,) for line in lines)
            )
            or "—"
        )

    @admin.display(description=_("resent from"))
    def display_resent_from(self, obj: OutboxMessage) -> str:
        if obj.resent_from_id is None:
            return "—"
        return format_html(
            '<a href="{}">{}</a>',
            self._url("change", quote(obj.resent_from_id)),
            _("message %(id)s (this is a resent copy of it)")
            % {"id": obj.resent_from_id},
        )

    @admin.display(description=_("resent as"))
    def display_resends(self, obj: OutboxMessage) -> str:
        copies = list(obj.resends.order_by("pk").only("pk", "status"))
        return (
            format_html_join(
                ", ",
                '<a href="{}">{}</a> ({})',
                (
                    (
                        self._url("change", quote(copy.pk)),
                        _("message %(id)s") % {"id": copy.pk},
                        copy.get_status_display(),
                    )
                    for copy in copies
                ),
            )
            or "—"
        )

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
        Match every word: in the subject, in a recipient's address, or as a
        whole Message-ID.

        Each word is one ``pk IN (subject matches UNION address matches)``:
        on PostgreSQL with ``pg_trgm``, the trigram indexes of migrations
        0004 and 0005 answer both halves, so a rare word is found among
        millions of messages without walking them. Elsewhere they scan. A
        Message-ID is matched exactly, by its index.
        """
        for word in smart_split(search_term):
            if word[:1] in "\"'" and word[-1:] == word[:1] and len(word) > 1:
                word = unescape_string_literal(word)
            if not word:
                continue
            matches = (
                self.model.objects.filter(subject__icontains=word)
                .order_by()
                .values("pk")
                .union(
                    Recipient.objects.filter(address__icontains=word)
                    .order_by()
                    .values("message")
                )
            )
            condition = Q(pk__in=matches)
            if "@" in word:
                bare = word.strip("<>")
                condition |= Q(message_id__in=[f"<{bare}>", bare])
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
    def resend(
        self, request: HttpRequest, queryset: QuerySet[Any]
    ) -> HttpResponse | None:
        """Queue a copy of each finished message: the same bytes and envelope."""
        if request.POST.get("post") != "yes":
            return self.confirm_action(
                request, queryset, "resend", applicable=FINAL_STATUSES
            )
        # Counted first: the selection may be a filter the action changes.
        total = queryset.count()
        created = resend_messages(queryset.filter(status__in=FINAL_STATUSES))
        skipped = total - len(created)
        if created:
            self._log(request, [old for old, _new in created], _("Resent."))
        if len(created) == 1:
            ((_old, new),) = created
            self.message_user(
                request,
                format_html(
                    'Resent as <a href="{}">message {}</a>.',
                    self._url("change", quote(new)),
                    new,
                ),
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
        return None

    @outbox_action(
        permission="requeue",
        description=_("Requeue"),
        description_plural=_(
            "Requeue selected failed or partially sent %(verbose_name_plural)s"
        ),
    )
    def requeue(
        self, request: HttpRequest, queryset: QuerySet[Any]
    ) -> HttpResponse | None:
        """Retry failed and partially sent messages, for who has not accepted them."""
        if request.POST.get("post") != "yes":
            return self.confirm_action(
                request, queryset, "requeue", applicable=OBJECT_ACTIONS["requeue"]
            )
        self._apply(
            request,
            queryset,
            OBJECT_ACTIONS["requeue"],
            lambda selection: selection.requeue(include_partial=True),
            after=Status.QUEUED,
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
        return None

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
            lambda selection: selection.cancel(),
            after=Status.CANCELLED,
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
        change: Callable[[Any], int],
        *,
        after: str,
        logged: Any,
        done_text: Any,
        skipped_text: Any,
    ) -> list[int]:
        """Apply a queryset state change to the selection; report both counts."""
        # Counted first: the selection may be a filter the action changes.
        total = queryset.count()
        ids = list(queryset.filter(status__in=statuses).values_list("pk", flat=True))
        done: list[int] = []
        if ids and change(self.model.objects.filter(pk__in=ids)):
            # Those the change applied to (a worker may have taken one meanwhile).
            done = list(
                self.model.objects.filter(pk__in=ids, status=after).values_list(
                    "pk", flat=True
                )
            )
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

    def _log(self, request: HttpRequest, ids: list[int], message: StrOrPromise) -> None:
        user_id = request.user.pk
        assert user_id is not None  # the admin's views need a signed-in user
        LogEntry.objects.log_actions(
            user_id=user_id,
            queryset=list(self.model.objects.filter(pk__in=ids).only("pk", "subject")),
            action_flag=CHANGE,
            change_message=str(message),
        )

    def response_action(
        self, request: HttpRequest, queryset: QuerySet[Any], *args: Any, **kwargs: Any
    ) -> HttpResponse | None:
        self._refuse_forged_actions(request)
        return super().response_action(request, queryset, *args, **kwargs)

    def _refuse_forged_actions(self, request: HttpRequest) -> None:
        """
        Answer an action this user may not run with 403.

        Django answers a forged action (one not offered to this user) with
        "No action selected", or, when the user may run no action at all,
        by showing the changelist as if nothing was posted. Say what it is.
        """
        if request.method != "POST":
            return
        for key, values in request.POST.lists():
            if key == "action" or key.endswith("-action"):
                for name in values:
                    if not self._may_run(request, name):
                        raise PermissionDenied

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
        urls += self.object_action_urls(info, wrap)
        return urls + super().get_urls()

    def _url(self, name: str, *args: Any) -> str:
        return reverse(
            f"{self.admin_site.name}:{self.opts.app_label}_{self.opts.model_name}_{name}",
            args=args,
        )

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        self._refuse_forged_actions(request)
        context = {
            # Evaluated when rendered, after Django's permission check.
            "mailkit_dashboard": partial(self.dashboard, request),
            "mailkit_tools_in_content": TOOLS_IN_CONTENT,
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
        return dashboard(self.model.objects.all(), self._url("changelist"))

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
        message = ParsedMessage(bytes(obj.mime))
        remote_images = request.GET.get("remote_images") == "1"
        preview_url = self._url("preview", quote(obj.pk))
        pk = quote(obj.pk)
        attempts = []
        for attempt in obj.attempt_set.all():
            kind, label = attempt_outcome(attempt)
            attempts.append(
                {
                    "attempt": attempt,
                    "kind": kind,
                    "label": label,
                    "started": when(attempt.started_at),
                    "recipients": [
                        {"address": address, "code": result[0], "reply": result[1]}
                        for address, result in (attempt.recipients or {}).items()
                    ],
                }
            )
        fields = header_fields(message)
        recipients = [
            {
                "recipient": recipient,
                "field": fields.get(recipient.address.lower(), "Bcc"),
                "updated": when(recipient.updated_at),
                "suppression_url": suppression_url(request, recipient, self.admin_site),
            }
            for recipient in obj.recipient_set.all()
        ]
        mime = bytes(obj.mime)
        raw = mime[:RAW_SOURCE_SHOWN]
        has_html = message.has_html
        tabs = [
            ("html", _("HTML")),
            ("text", _("Plain text")),
            ("headers", _("Headers")),
            ("raw", _("Raw source")),
        ]
        selected = "html" if has_html else "text"
        return {
            "tabs": [
                {"name": name, "label": label, "selected": name == selected}
                for name, label in tabs
            ],
            "raw": raw.decode("utf-8", "replace"),
            "raw_shown": len(raw),
            "raw_truncated": len(raw) < len(mime),
            "size": len(mime),
            "message": message,
            "eml_url": self._url("eml", pk),
            "preview_url": preview_url + ("?remote_images=1" if remote_images else ""),
            "remote_images": remote_images,
            "parts": [
                {"part": part, "url": self._url("part", pk, part.index)}
                for part in message.parts
            ],
            "recipients": recipients,
            "attempts": attempts,
            "object_actions": self.object_action_buttons(request, obj),
        }


def _short_datetime(value: Any) -> str:
    return date_format(timezone.localtime(value), "SHORT_DATETIME_FORMAT")
