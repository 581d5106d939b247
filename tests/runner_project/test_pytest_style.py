"""pytest-django style tests (Django's runner skips plain functions)."""

import django_mailkit


def test_mailoutbox_fixture(mailoutbox):
    django_mailkit.send_mail("fixture", "b", None, ["a@example.com"])
    assert [(m.subject, m.sent_using) for m in mailoutbox] == [("fixture", "default")]


def test_mailoutbox_is_cleared(mailoutbox):
    assert mailoutbox == []
