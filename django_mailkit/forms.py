"""Forms of the outbox admin."""

from __future__ import annotations

import re
from typing import Any

from django import forms
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.core.validators import validate_email
from django.utils.html import escape
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from . import conf
from .handler import DEFAULT_MAILER_ALIAS, mailers

__all__ = ["SendTestEmailForm"]

_SEPARATORS = re.compile(r"[\s,;]+")


def mailer_choices() -> list[tuple[str, str]]:
    """Return (alias, label) for every configured mailer, naming its backend."""
    configs = conf.mailers_setting()
    if configs is None:
        backend = conf.legacy_setting("EMAIL_BACKEND", "smtp")
        return [(DEFAULT_MAILER_ALIAS, f"{DEFAULT_MAILER_ALIAS} ({_kind(backend)})")]
    choices = []
    for alias in mailers:
        config = configs.get(alias)
        config = config if isinstance(config, dict) else {}
        kind = _kind(str(config.get("BACKEND", "")), config.get("OPTIONS"))
        choices.append((alias, f"{alias} ({kind})" if kind else alias))
    return choices


def _kind(backend: str, options: Any = None) -> str:
    """Say what a backend is: "smtp", "outbox → smtp", or its dotted path."""
    parts = backend.rsplit(".", 2)
    kind = parts[-2] if len(parts) == 3 and parts[-1] == "EmailBackend" else backend
    if kind == "outbox" and isinstance(options, dict) and options.get("deliver_using"):
        kind = f"outbox → {options['deliver_using']}"
    return kind


class SendTestEmailForm(forms.Form):
    """Who gets the test email, and which mailer sends it."""

    to = forms.CharField(
        label=_("Recipients"),
        required=False,
        widget=forms.Textarea(attrs={"rows": 2, "cols": 60}),
        help_text=_("Email addresses, separated by commas, spaces or new lines."),
    )
    admins = forms.BooleanField(label=_("The ADMINS"), required=False)
    managers = forms.BooleanField(label=_("The MANAGERS"), required=False)
    mailer = forms.ChoiceField(label=_("Mailer"))

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        choices = mailer_choices()
        mailer = self.fields["mailer"]
        assert isinstance(mailer, forms.ChoiceField)
        mailer.choices = choices
        aliases = [alias for alias, _label in choices]
        if DEFAULT_MAILER_ALIAS in aliases:
            self.fields["mailer"].initial = DEFAULT_MAILER_ALIAS
        self.staff: dict[str, list[str]] = {}
        for name, setting in (("admins", "ADMINS"), ("managers", "MANAGERS")):
            field = self.fields[name]
            try:
                addresses = [str(address) for address in conf.staff_addresses(setting)]
            except ImproperlyConfigured as exc:
                addresses, help_text = [], str(exc)
            else:
                help_text = ", ".join(addresses) or gettext("%(setting)s is empty.") % {
                    "setting": setting
                }
            # The admin renders help texts as HTML; these are addresses.
            field.help_text = escape(help_text)
            if not addresses:
                field.disabled = True
            self.staff[name] = addresses

    def clean_to(self) -> list[str]:
        addresses = [
            item for item in _SEPARATORS.split(self.cleaned_data["to"]) if item
        ]
        invalid = []
        for address in addresses:
            try:
                validate_email(address)
            except ValidationError:
                invalid.append(address)
        if invalid:
            raise ValidationError(
                gettext("Not an email address: %(addresses)s"),
                code="invalid",
                params={"addresses": ", ".join(invalid)},
            )
        return addresses

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        assert cleaned is not None  # Form.clean() returns cleaned_data
        recipients = list(cleaned.get("to") or [])
        for name in ("admins", "managers"):
            if cleaned.get(name):
                recipients.extend(self.staff[name])
        # Each address once, in the order given.
        recipients = list(dict.fromkeys(recipients))
        if not recipients and not self.errors:
            raise ValidationError(
                gettext("Give at least one address, or choose the ADMINS or MANAGERS."),
                code="no_recipients",
            )
        cleaned["recipients"] = recipients
        return cleaned
