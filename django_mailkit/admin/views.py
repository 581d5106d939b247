"""
The outbox admin's own pages: the message's downloads and preview, and the
"Send test email" page.

Every view is wrapped in ``admin_site.admin_view`` (``OutboxMessageAdmin.
get_urls``) and checks its permission before it looks anything up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import quote, unquote
from django.core.exceptions import PermissionDenied
from django.db.models import Count, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from ..forms import SendTestEmailForm
from ..models import OutboxMessage, Status
from ..testemail import send_test_email
from .display import ParsedMessage, eml_response, part_response, preview_response
from .legacy import OL_BREADCRUMBS

__all__ = ["MessageViewsMixin"]


if TYPE_CHECKING:
    from django.contrib.admin import ModelAdmin

    # Checked as the ModelAdmin it is mixed into.
    _MixinBase = ModelAdmin[OutboxMessage]
else:
    _MixinBase = object


class MessageViewsMixin(_MixinBase):
    """The views of ``OutboxMessageAdmin`` beyond Django's own."""

    if TYPE_CHECKING:  # provided by OutboxMessageAdmin

        def _url(self, name: str, *args: Any) -> str: ...
        def has_send_test_email_permission(self, request: HttpRequest) -> bool: ...

    send_test_email_template = "django_mailkit/admin/send_test_email.html"

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
            ParsedMessage(bytes(obj.mime)),
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
        response = part_response(ParsedMessage(bytes(obj.mime)), index)
        if response is None:
            raise Http404(_("This message has no such part."))
        return response

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
                if result.error:
                    form.add_error(None, result.describe().rstrip(".") + ".")
                else:
                    self.message_user(
                        request, self._describe(request, result), _level(result)
                    )
                    return HttpResponseRedirect(request.get_full_path())
        else:
            form = SendTestEmailForm()
        context = {
            **self.admin_site.each_context(request),
            "title": _("Send a test email"),
            "form": form,
            # The stubs want a ModelForm; any form renders (all its fields).
            "adminform": helpers.AdminForm(
                form,  # type: ignore[arg-type]
                [(None, {"fields": list(form.fields)})],
                {},
                model_admin=self,
            ),
            "opts": self.opts,
            "has_view_permission": self.has_view_permission(request),
            "ol_breadcrumbs": OL_BREADCRUMBS,
            "media": self.media + form.media,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, self.send_test_email_template, context)

    confirm_action_template = "django_mailkit/admin/confirm_action.html"
    #: The confirmation page lists this many messages at most.
    confirm_max_listed = 100

    def confirm_action(
        self,
        request: HttpRequest,
        queryset: QuerySet[Any],
        action: str,
        *,
        applicable: Any,
    ) -> TemplateResponse:
        """
        The page that asks before a risky action runs, as ``delete_selected``.

        It lists the selection and posts the same action back with
        ``post=yes``. Nothing is changed until then.
        """
        total = queryset.count()
        fields = ["pk", "subject", "recipients", "status", "last_error", "created_at"]
        listed = list(queryset.only(*fields)[: self.confirm_max_listed])
        counts = dict(
            queryset.order_by()
            .values_list("status")
            .annotate(count=Count("pk"))
            .values_list("status", "count")
        )
        will = sum(count for status, count in counts.items() if status in applicable)
        single = len(listed) == 1 and total == 1
        if single and not request.path.endswith(self._url("changelist")):
            back = self._url("change", quote(listed[0].pk))
        else:
            back = request.get_full_path()
        count = {"count": will}
        if action == "resend":
            title = ngettext(
                "Resend %(count)d message?", "Resend %(count)d messages?", will
            )
        else:
            title = ngettext(
                "Requeue %(count)d message?", "Requeue %(count)d messages?", will
            )
        context = {
            **self.admin_site.each_context(request),
            "title": title % count,
            "subtitle": None,
            "opts": self.opts,
            "action": action,
            "objects": [
                {"object": obj, "url": self._url("change", quote(obj.pk))}
                for obj in listed
            ],
            "total": total,
            "more": total - len(listed),
            "will": will,
            "skipped": total - will,
            "partial": counts.get(Status.PARTIAL, 0),
            "hidden": [
                (name, value)
                for name, values in request.POST.lists()
                if name not in ("csrfmiddlewaretoken", "post", "index")
                for value in values
            ],
            "back_url": back,
            "ol_breadcrumbs": OL_BREADCRUMBS,
            "media": self.media,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, self.confirm_action_template, context)

    def _describe(self, request: HttpRequest, result: Any) -> Any:
        text = result.describe()
        if result.outbox_id is not None and self.has_view_permission(request):
            return format_html(
                '{} <a href="{}">{}</a>',
                text,
                self._url("change", quote(result.outbox_id)),
                _("Open it."),
            )
        return text


def _level(result: Any) -> int:
    if result.failed:
        return messages.ERROR
    if result.partly_failed:
        return messages.WARNING
    return messages.SUCCESS
