"""
The message page's action buttons before Django 6.1.

RemovedWithDjango61Minimum: delete this module, and every line marked with
that comment elsewhere, once django_mailkit requires Django 6.1. Django 6.1
runs admin actions from the change form itself (``ActionLocation``); on 5.2
and 6.0 the message page shows one button per action instead, each posting
to one small view that runs the very same action on that one message.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, cast

import django
from django.contrib.admin.utils import quote
from django.core.exceptions import PermissionDenied
from django.db import router, transaction
from django.http import (
    Http404,
    HttpRequest,
    HttpResponseBase,
    HttpResponseNotAllowed,
    HttpResponseRedirect,
)
from django.urls import path
from django.utils.translation import gettext_lazy as _

from ..models import FINAL_STATUSES, OutboxMessage, Status

#: Django runs actions from the change form itself (6.1 and later).
CHANGE_FORM_ACTIONS = django.VERSION >= (6, 1)

#: Django 6.1 marks breadcrumbs up as a list; 5.2 and 6.0 as a div with
#: separators, and their CSS styles only that.
OL_BREADCRUMBS = CHANGE_FORM_ACTIONS

#: On 5.2 and 6.0, the changelist's object tools float over the top of the
#: content; the dashboard goes below them.
TOOLS_IN_CONTENT = not CHANGE_FORM_ACTIONS

#: The actions that apply to one message, with the statuses they apply to.
OBJECT_ACTIONS = {
    "resend": FINAL_STATUSES,
    "requeue": frozenset({Status.FAILED, Status.PARTIAL}),
    "cancel": frozenset({Status.QUEUED}),
}


if TYPE_CHECKING:
    from django.contrib.admin import ModelAdmin
    from django_stubs_ext import StrOrPromise

    # Checked as the ModelAdmin it is mixed into.
    _MixinBase = ModelAdmin[OutboxMessage]
else:
    _MixinBase = object


class ObjectAction(Protocol):
    """An admin action made by ``outbox_action()``."""

    #: The label of its button on the message page.
    singular_description: StrOrPromise

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...


class ObjectActionsMixin(_MixinBase):
    """The per-message action buttons and their view, for ``OutboxMessageAdmin``."""

    if TYPE_CHECKING:  # provided by OutboxMessageAdmin and MessageViewsMixin

        def _url(self, name: str, *args: Any) -> str: ...
        def _may_run(self, request: HttpRequest, name: str) -> bool: ...
        def _get_viewable(
            self, request: HttpRequest, object_id: str
        ) -> OutboxMessage: ...

    def object_action_urls(self, info: str, wrap: Callable[..., Any]) -> list[Any]:
        if CHANGE_FORM_ACTIONS:
            return []
        return [
            path(
                "<path:object_id>/actions/<str:action>/",
                wrap(self.object_action_view),
                name=f"{info}_object_action",
            )
        ]

    def object_action_buttons(
        self, request: HttpRequest, obj: OutboxMessage
    ) -> list[dict[str, Any]]:
        """The buttons for ``obj``: the actions this user may run on it."""
        if CHANGE_FORM_ACTIONS:
            return []
        return [
            {
                "name": name,
                "label": func.singular_description,
                "url": self._url("object_action", quote(obj.pk), name),
            }
            for name, func in self._object_actions(request, obj).items()
        ]

    def _object_actions(
        self, request: HttpRequest, obj: OutboxMessage | None = None
    ) -> dict[str, ObjectAction]:
        """The one-message actions this user may run (on ``obj``'s status)."""
        allowed: dict[str, ObjectAction] = {}
        for name, statuses in OBJECT_ACTIONS.items():
            if not self._may_run(request, name):
                continue
            if obj is not None and obj.status not in statuses:
                continue
            action = self.get_action(name)
            # (Django 6.1 returns an Action; mypy checks the 5.2 API, Python 3.11.)
            func = action[0] if isinstance(action, tuple) else action.func  # type: ignore[attr-defined]
            allowed[name] = cast(ObjectAction, func)  # made by outbox_action()
        return allowed

    def object_action_view(
        self, request: HttpRequest, object_id: str, action: str
    ) -> HttpResponseBase:
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
