"""
One-click unsubscribe (RFC 8058): the headers, the signed link, the view.

``add_list_unsubscribe(message, request_or_base_url, mailer=...)`` adds to a
message for one recipient::

    List-Unsubscribe: <https://example.com/mail/unsubscribe/TOKEN/>
    List-Unsubscribe-Post: List-Unsubscribe=One-Click

The token is the recipient's address and the mailer the unsubscribe applies
to, signed with ``SECRET_KEY`` (``TimestampSigner``, its own salt); it
expires after ``MAILKIT['UNSUBSCRIBE_MAX_AGE_DAYS']``. The view, included
with ``path("mail/", include("django_mailkit.urls"))``, answers:

* POST (what a mail provider sends when the user clicks "unsubscribe",
  with the body ``List-Unsubscribe=One-Click``): the address goes on the
  suppression list for that mailer, idempotently. The POST is exempt from
  CSRF protection, as the RFC requires: the provider has no CSRF token, and
  the signed token is what proves the request comes from the recipient;
* GET (a person following the link, or a link scanner, which must not
  unsubscribe anyone): a page with a button that makes the same POST.

A bad or expired token gets 400 and writes nothing.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

from django.core import signing
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, reverse
from django.utils.encoding import iri_to_uri, punycode
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from . import conf
from .exceptions import InvalidAddress
from .models import SuppressionReason
from .suppression import normalise, suppress

__all__ = [
    "InvalidToken",
    "add_list_unsubscribe",
    "make_token",
    "read_token",
    "unsubscribe_view",
]

SALT = "django_mailkit.unsubscribe"
#: The body of a one-click POST (RFC 8058 section 3.2).
ONE_CLICK = "List-Unsubscribe=One-Click"
#: The longest mailer alias a token may carry (Suppression.mailer's length).
_MAX_MAILER = 100


class InvalidToken(ValueError):
    """An unsubscribe token is forged, damaged or expired."""

    def __init__(self, message: str, *, expired: bool = False) -> None:
        super().__init__(message)
        self.expired = expired


def _signer() -> signing.TimestampSigner:
    return signing.TimestampSigner(salt=SALT)


def make_token(address: str, *, mailer: str | None) -> str:
    """
    Return the signed token for ``address`` and ``mailer``.

    ``mailer`` is the outbox mailer alias the unsubscribe applies to, or
    None for every mailer. The address is normalised (and checked) first.
    """
    if mailer is not None and (
        not isinstance(mailer, str) or not mailer or len(mailer) > _MAX_MAILER
    ):
        raise ValueError(
            f"mailer must be an outbox mailer alias (a non-empty string of at "
            f"most {_MAX_MAILER} characters), or None for every mailer; got "
            f"{mailer!r}."
        )
    payload = {"a": normalise(address, field="unsubscribe address"), "m": mailer or ""}
    return _signer().sign_object(payload, compress=True)


def read_token(token: str) -> tuple[str, str]:
    """
    Return ``(address, mailer)`` from a token, or raise InvalidToken.

    Checked in full even though signed: the payload must be exactly what
    ``make_token()`` writes.
    """
    max_age = conf.unsubscribe_max_age_days() * 86400
    try:
        payload = _signer().unsign_object(token, max_age=max_age)
    except signing.SignatureExpired:
        raise InvalidToken("This unsubscribe link has expired.", expired=True) from None
    except (signing.BadSignature, ValueError, UnicodeError):
        raise InvalidToken("This unsubscribe link is not valid.") from None
    if (
        not isinstance(payload, dict)
        or set(payload) != {"a", "m"}
        or not isinstance(payload["a"], str)
        or not isinstance(payload["m"], str)
        or len(payload["m"]) > _MAX_MAILER
    ):
        raise InvalidToken("This unsubscribe link is not valid.")
    try:
        address = normalise(payload["a"])
    except InvalidAddress:
        raise InvalidToken("This unsubscribe link is not valid.") from None
    return address, payload["m"]


def add_list_unsubscribe(
    message: Any,
    request_or_base_url: HttpRequest | str,
    *,
    mailer: str | None,
    address: str | None = None,
) -> str:
    """
    Add RFC 8058 one-click unsubscribe headers to ``message``; return the URL.

    ``request_or_base_url`` is the current request, or the site's base URL
    (``"https://example.com"``) where there is none (a worker, a command).
    The URL must be HTTPS (RFC 8058 section 3.1); a Unicode host or path
    is written IDNA- and percent-encoded, as a header must carry it.
    ``mailer`` is the outbox mailer the unsubscribe applies to (the alias
    you send the message with; any other raises ValueError), or None for
    every mailer. ``address`` is
    the recipient; it defaults to the message's only recipient: a message
    to several people can't carry one unsubscribe link for each, so send
    one per recipient.
    Existing ``List-Unsubscribe`` headers are replaced. Sign these headers
    with DKIM: providers only trust a one-click header that is signed.
    """
    if address is None:
        recipients = list(message.recipients())
        if len(recipients) != 1:
            raise ValueError(
                f"add_list_unsubscribe() needs a message to one recipient, or "
                f"address=...; this one has {len(recipients)}. Send one message "
                f"per recipient, each with its own link."
            )
        address = str(recipients[0])
    token = make_token(address, mailer=mailer)
    if mailer is not None:
        _check_outbox_mailer(mailer)
    try:
        path = reverse("django_mailkit:unsubscribe", args=[token])
    except NoReverseMatch as exc:
        raise NoReverseMatch(
            f"{exc} One-click unsubscribe needs django_mailkit's URLs: add "
            "path('mail/', include('django_mailkit.urls')) to your URLconf."
        ) from None
    if isinstance(request_or_base_url, str):
        base = request_or_base_url.rstrip("/")
        url = base + path
    else:
        url = request_or_base_url.build_absolute_uri(path)
    url = _ascii_url(url)
    if not url.lower().startswith("https://") or any(c in url for c in "<>\r\n "):
        raise ValueError(
            f"RFC 8058 requires an HTTPS URL for one-click unsubscribe; got "
            f"{url[:100]!r}. Pass the site's https:// base URL."
        )
    headers = message.extra_headers
    for name in list(headers):
        if name.lower() in ("list-unsubscribe", "list-unsubscribe-post"):
            del headers[name]
    headers["List-Unsubscribe"] = f"<{url}>"
    headers["List-Unsubscribe-Post"] = ONE_CLICK
    return url


def _check_outbox_mailer(alias: str) -> None:
    # An entry for any other alias is one no delivery looks at: the person
    # who unsubscribed would still be mailed.
    from .backends.outbox import EmailBackend as OutboxBackend
    from .handler import mailers

    hint = (
        "pass the outbox mailer alias you send the message with, or None for "
        "every mailer."
    )
    if alias not in mailers:
        raise ValueError(
            f"add_list_unsubscribe(): mailer {alias!r} is not in MAILERS; {hint}"
        )
    if not isinstance(mailers[alias], OutboxBackend):
        raise ValueError(
            f"add_list_unsubscribe(): mailer {alias!r} is not an outbox mailer, "
            f"and the suppression list applies to outbox mailers only; {hint}"
        )


def _ascii_url(url: str) -> str:
    """
    ``url`` in ASCII: a header with anything else is RFC 2047-encoded, and
    no provider reads that as a URL. The host is IDNA-encoded, the rest
    percent-encoded; a URL that is already ASCII is returned as it is.
    """
    if url.isascii():
        return url
    parts = urlsplit(url)
    netloc = parts.netloc
    if not netloc.isascii():
        try:
            netloc = punycode(netloc)
        except UnicodeError:
            raise ValueError(
                f"The unsubscribe URL's host {netloc[:100]!r} is not a valid "
                f"domain name."
            ) from None
    return iri_to_uri(urlunsplit(parts._replace(netloc=netloc)))


# RFC 8058: the provider's POST carries no CSRF token; the signed token is
# the proof that the request comes from the recipient. GET changes nothing.
@csrf_exempt
@require_http_methods(["GET", "HEAD", "POST"])
def unsubscribe_view(request: HttpRequest, token: str) -> HttpResponse:
    """GET: a page asking to confirm. POST: unsubscribe (idempotent)."""
    try:
        address, mailer = read_token(token)
    except InvalidToken as exc:
        return _page(
            request,
            "django_mailkit/unsubscribe/invalid.html",
            {"error": str(exc), "expired": exc.expired},
            status=400,
        )
    context = {"address": address, "mailer": mailer}
    if request.method != "POST":
        # Link scanners follow links: a GET never unsubscribes.
        return _page(request, "django_mailkit/unsubscribe/confirm.html", context)
    if request.POST.get("List-Unsubscribe") != "One-Click":
        return _page(
            request,
            "django_mailkit/unsubscribe/invalid.html",
            {"error": f"The request must carry {ONE_CLICK}.", "expired": False},
            status=400,
        )
    suppress(
        [address],
        reason=SuppressionReason.UNSUBSCRIBED,
        mailer=mailer,
        source="one-click unsubscribe",
    )
    return _page(request, "django_mailkit/unsubscribe/done.html", context)


def _page(
    request: HttpRequest, template: str, context: dict[str, Any], *, status: int = 200
) -> HttpResponse:
    response = TemplateResponse(request, template, context, status=status)
    # The token is in the URL: keep it out of caches, indexes and referrers.
    response["Cache-Control"] = "no-store"
    response["Referrer-Policy"] = "no-referrer"
    response["X-Robots-Tag"] = "noindex"
    return response
