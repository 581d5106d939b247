"""pytest-django style tests (Django's runner skips plain functions)."""

from django.conf import settings

import django_mailkit


def test_mailoutbox_fixture(mailoutbox):
    django_mailkit.send_mail("fixture", "b", None, ["a@example.com"])
    # As Django 6.1: without MAILERS, the backend has no alias.
    alias = "default" if hasattr(settings, "MAILERS") else None
    assert [(m.subject, m.sent_using) for m in mailoutbox] == [("fixture", alias)]


def test_mailoutbox_is_cleared(mailoutbox):
    assert mailoutbox == []
