"""
RFC 8058 one-click unsubscribe: the headers, the signed expiring link, and
the view through the test client (CSRF checks on), with bad and expired
signatures.
"""

import re
from unittest import mock

import pytest
from django.core import signing
from django.core.exceptions import ImproperlyConfigured
from django.test import Client, RequestFactory, override_settings
from django.urls import NoReverseMatch

from django_mailkit import EmailMessage, mailers
from django_mailkit.models import (
    OutboxMessage,
    RecipientStatus,
    Status,
    Suppression,
    SuppressionReason,
)
from django_mailkit.unsubscribe import (
    SALT,
    add_list_unsubscribe,
    make_token,
    read_token,
)
from django_mailkit.worker import Worker
from tests.mailers import outbox_via_smtp

pytestmark = pytest.mark.django_db

BASE = "https://news.example.com"
ONE_CLICK = {"List-Unsubscribe": "One-Click"}


def message(to=("Ann <Ann@Example.com>",)):
    return EmailMessage("News", "body", "news@example.com", list(to))


def link(**kwargs):
    kwargs.setdefault("mailer", "newsletter")
    return add_list_unsubscribe(message(), BASE, **kwargs)


def path_of(url):
    return url[len(BASE) :]


@pytest.fixture(autouse=True)
def newsletter_mailer():
    # The links below are for the outbox mailer "newsletter".
    with override_settings(
        MAILERS={
            "default": {"BACKEND": "django_mailkit.backends.locmem.EmailBackend"},
            "newsletter": {
                "BACKEND": "django_mailkit.backends.outbox.EmailBackend",
                "OPTIONS": {"deliver_using": "default"},
            },
        }
    ):
        yield


@pytest.fixture
def client():
    # As a mail provider's POST: no cookie, no CSRF token; checks enforced.
    return Client(enforce_csrf_checks=True)


def listed():
    return list(
        Suppression.objects.values_list("address", "mailer", "reason", "source")
    )


def test_the_headers():
    msg = message()
    url = add_list_unsubscribe(msg, BASE, mailer="newsletter")
    assert re.fullmatch(r"https://news\.example\.com/mail/unsubscribe/[\w:.-]+/", url)
    parsed = msg.message()
    assert parsed["List-Unsubscribe"] == f"<{url}>"
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    # Added again, it replaces (whatever the case of the old header).
    msg.extra_headers["list-unsubscribe"] = "<mailto:old@example.com>"
    add_list_unsubscribe(msg, BASE + "/", mailer=None)
    names = [n for n in msg.extra_headers if n.lower().startswith("list-unsub")]
    assert names == ["List-Unsubscribe", "List-Unsubscribe-Post"]


def test_a_unicode_base_url_gives_an_ascii_header():
    # Non-ASCII in the header would be RFC 2047-encoded, which no provider
    # reads as a URL (RFC 2369: a URL between angle brackets): the one-click
    # link would silently not exist.
    msg = message()
    url = add_list_unsubscribe(msg, "https://bücher.example/für-sie", mailer=None)
    assert url.startswith("https://xn--bcher-kva.example/f%C3%BCr-sie/mail/")
    header = msg.message()["List-Unsubscribe"]
    assert header == f"<{url}>"
    assert b"List-Unsubscribe: <https://xn--bcher-kva.example/" in (
        msg.message().as_bytes()
    )
    token = url.rstrip("/").rsplit("/", 1)[1]
    assert read_token(token) == ("ann@example.com", "")


@override_settings(ALLOWED_HOSTS=["shop.example.com"])
def test_the_link_from_a_request():
    request = RequestFactory().get("/", secure=True, HTTP_HOST="shop.example.com")
    url = add_list_unsubscribe(message(), request, mailer=None)
    assert url.startswith("https://shop.example.com/mail/unsubscribe/")


@pytest.mark.parametrize(
    "call, error",
    [
        (
            lambda: add_list_unsubscribe(message(), "http://x.example", mailer=None),
            "HTTPS",
        ),
        (
            lambda: add_list_unsubscribe(
                message(["a@example.com", "b@example.com"]), BASE, mailer=None
            ),
            "needs a message to one recipient, or address=...; this one has 2",
        ),
        (lambda: add_list_unsubscribe(message(), BASE, mailer=""), "mailer must be"),
        (
            lambda: add_list_unsubscribe(
                message(), BASE, mailer=None, address="a@example.com\r\nBcc: x@y"
            ),
            "Invalid address",
        ),
        (lambda: add_list_unsubscribe(message(), BASE + "/a b", mailer=None), "HTTPS"),
        # A link for a mailer that is not the outbox one you send with would
        # list the address where no delivery looks: the person stays mailed.
        (
            lambda: add_list_unsubscribe(message(), BASE, mailer="newsleter"),
            "add_list_unsubscribe(): mailer 'newsleter' is not in MAILERS; pass "
            "the outbox mailer alias you send the message with, or None for "
            "every mailer.",
        ),
        (
            lambda: add_list_unsubscribe(message(), BASE, mailer="default"),
            "add_list_unsubscribe(): mailer 'default' is not an outbox mailer, "
            "and the suppression list applies to outbox mailers only; pass the "
            "outbox mailer alias you send the message with, or None for every "
            "mailer.",
        ),
    ],
)
def test_the_helper_refuses_what_it_cannot_do_right(call, error):
    with pytest.raises(ValueError) as caught:
        call()
    assert error in str(caught.value)


def test_get_asks_and_changes_nothing_then_post_unsubscribes_once(client):
    url = path_of(link())
    page = client.get(url)
    assert page.status_code == 200
    assert page["Cache-Control"] == "no-store"
    assert page["Referrer-Policy"] == "no-referrer"
    content = page.content.decode()
    assert "<strong>ann@example.com</strong>" in content
    assert '<input type="hidden" name="List-Unsubscribe" value="One-Click">' in content
    assert listed() == []  # link scanners GET: nobody is unsubscribed

    response = client.post(url, ONE_CLICK)
    assert response.status_code == 200
    assert b"will not receive these emails any more" in response.content
    expected = [
        ("ann@example.com", "newsletter", "unsubscribed", "one-click unsubscribe")
    ]
    assert listed() == expected
    # Idempotent: the provider may retry, the user may click twice.
    first = Suppression.objects.get().created_at
    assert client.post(url, ONE_CLICK).status_code == 200
    assert listed() == expected
    assert Suppression.objects.get().created_at == first


def test_a_multipart_post_works_too(client):
    # RFC 8058 allows multipart/form-data as well as urlencoded.
    response = client.post(path_of(link(mailer=None)), ONE_CLICK)  # multipart
    assert response.status_code == 200
    response = client.post(
        path_of(link(mailer=None, address="b@example.com")),
        "List-Unsubscribe=One-Click",
        content_type="application/x-www-form-urlencoded",
    )
    assert response.status_code == 200
    assert sorted(a for a, *_ in listed()) == ["ann@example.com", "b@example.com"]
    assert {m for _, m, _r, _s in listed()} == {""}


def test_a_post_without_the_one_click_body_is_refused(client):
    url = path_of(link())
    assert client.post(url, {}).status_code == 400
    assert client.post(url, {"List-Unsubscribe": "yes"}).status_code == 400
    assert listed() == []


def tampered(token):
    payload, rest = token.split(":", 1)
    flipped = payload[:-1] + ("A" if payload[-1] != "A" else "B")
    return f"{flipped}:{rest}"


@pytest.mark.parametrize(
    "make",
    [
        lambda: tampered(make_token("a@example.com", mailer="newsletter")),
        lambda: make_token("a@example.com", mailer="newsletter")[:-2],
        lambda: "garbage",
        lambda: "..:..",
        # Django's default salt: a token made for something else.
        lambda: signing.TimestampSigner().sign_object({"a": "a@example.com", "m": ""}),
        # Another project's key.
        lambda: signing.TimestampSigner(key="other", salt=SALT).sign_object(
            {"a": "a@example.com", "m": ""}
        ),
        # Well signed, but not what make_token() writes.
        lambda: signing.TimestampSigner(salt=SALT).sign_object(
            {"a": "a@example.com\r\nRCPT TO:<b@example.com>", "m": ""}
        ),
        lambda: signing.TimestampSigner(salt=SALT).sign_object(["a@example.com"]),
        lambda: signing.TimestampSigner(salt=SALT).sign_object(
            {"a": "a@example.com", "m": "", "extra": 1}
        ),
    ],
)
def test_a_bad_signature_is_400_and_writes_nothing(client, make):
    url = f"/mail/unsubscribe/{make()}/"
    for response in (client.get(url), client.post(url, ONE_CLICK)):
        assert response.status_code == 400
        assert b"This unsubscribe link is not valid." in response.content
    assert listed() == []


def test_an_expired_link_is_400_and_writes_nothing(client):
    real = signing.TimestampSigner.timestamp
    with mock.patch.object(
        signing.TimestampSigner,
        "timestamp",
        lambda self: signing.b62_encode(
            int(signing.b62_decode(real(self))) - 91 * 86400
        ),
    ):
        url = path_of(link())
    for response in (client.get(url), client.post(url, ONE_CLICK)):
        assert response.status_code == 400
        assert b"This unsubscribe link has expired." in response.content
    assert listed() == []
    # A longer lifetime makes the same link work.
    with override_settings(MAILKIT={"UNSUBSCRIBE_MAX_AGE_DAYS": 92}):
        assert client.post(url, ONE_CLICK).status_code == 200
    assert len(listed()) == 1


def test_other_methods_are_405(client):
    assert client.put(path_of(link()), ONE_CLICK).status_code == 405
    assert listed() == []


@override_settings(
    MAILERS={
        "default": {
            "BACKEND": "django_mailkit.backends.outbox.EmailBackend",
            "OPTIONS": {"deliver_using": "smtp"},
        },
        "newsletter": {
            "BACKEND": "django_mailkit.backends.outbox.EmailBackend",
            "OPTIONS": {"deliver_using": "smtp"},
        },
        "smtp": {"BACKEND": "django_mailkit.backends.locmem.EmailBackend"},
    },
    MAILKIT={"USE_TASKS": False},
)
def test_an_unsubscribed_recipient_is_skipped_by_that_mailer_only(client):
    msg = message()
    url = add_list_unsubscribe(msg, BASE, mailer="newsletter")
    assert mailers["newsletter"].send_messages([msg]) == 1
    assert client.post(path_of(url), ONE_CLICK).status_code == 200

    for alias in ("newsletter", "default"):
        next_one = message()
        next_one.subject = alias
        assert mailers[alias].send_messages([next_one]) == 1
    Worker(once=True, interval=0).run()
    news = OutboxMessage.objects.get(subject="newsletter")
    reset = OutboxMessage.objects.get(subject="default")
    assert news.status == Status.SUPPRESSED
    assert news.recipient_set.get().status == RecipientStatus.SUPPRESSED
    assert "Unsubscribed" in news.recipient_set.get().smtp_reply
    assert reset.status == Status.SENT
    assert Suppression.objects.get().reason == SuppressionReason.UNSUBSCRIBED


def test_the_lifetime_must_be_at_least_a_day():
    token = make_token("a@example.com", mailer=None)
    with override_settings(MAILKIT={"UNSUBSCRIBE_MAX_AGE_DAYS": 0}):
        with pytest.raises(ImproperlyConfigured) as caught:
            read_token(token)
    assert (
        str(caught.value) == "MAILKIT['UNSUBSCRIBE_MAX_AGE_DAYS'] must be more than 0."
    )


#: A URLconf without django_mailkit's URLs (see the test below).
urlpatterns: list = []


@override_settings(ROOT_URLCONF=__name__)
def test_without_the_urls_djangos_error_says_what_to_add():
    with pytest.raises(NoReverseMatch) as caught:
        add_list_unsubscribe(message(), BASE, mailer=None)
    text = str(caught.value)
    assert text.startswith("'django_mailkit' is not a registered namespace")
    assert text.endswith(
        "add path('mail/', include('django_mailkit.urls')) to your URLconf."
    )


def test_an_unsubscribed_unicode_address_is_skipped_in_any_unicode_form(
    client, smtp_server
):
    # "jörg" typed on one system is U+00F6 (NFC); on another, o + U+0308
    # (NFD). Mail systems treat them as one mailbox (RFC 6532 asks for NFC):
    # the suppression list must too, or the unsubscribed person is mailed.
    nfc, nfd = "j\u00f6rg@example.com", "jo\u0308rg@example.com"
    url = add_list_unsubscribe(message([nfc]), BASE, mailer=None)
    assert client.post(path_of(url), ONE_CLICK).status_code == 200
    with override_settings(
        MAILERS=outbox_via_smtp(smtp_server, timeout=5),
        MAILKIT={"USE_TASKS": False},
    ):
        assert mailers["default"].send_messages([message([nfd, nfc])]) == 1
        Worker(once=True, interval=0).run()
    record = OutboxMessage.objects.get()
    assert record.status == Status.SUPPRESSED
    assert not [
        line for line in smtp_server.commands() if line[:8].upper() == b"RCPT TO:"
    ]
