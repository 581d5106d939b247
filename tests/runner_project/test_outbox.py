"""Run in a subprocess by tests/test_test_runner.py, under both test runners."""

from django.conf import settings
from django.core import mail
from django.test import SimpleTestCase

import django_mailkit

USES_MAILERS = hasattr(settings, "MAILERS")


class OutboxTests(SimpleTestCase):
    def test_our_api_lands_in_the_outbox(self):
        django_mailkit.send_mail("ours", "b", None, ["a@example.com"])
        django_mailkit.EmailMessage("message", "b", to=["b@example.com"]).send()
        django_mailkit.mail_admins("admins", "b")
        # As Django 6.1: without MAILERS, the backend has no alias.
        alias = "default" if USES_MAILERS else None
        expected = [
            ("ours", alias),
            ("message", alias),
            ("[Django] admins", alias),
        ]
        if USES_MAILERS:
            django_mailkit.send_mail(
                "alerts", "b", None, ["c@example.com"], using="alerts"
            )
            expected.append(("alerts", "alerts"))
        self.assertEqual([(m.subject, m.sent_using) for m in mail.outbox], expected)

    def test_djangos_api_lands_in_the_outbox(self):
        mail.send_mail("django", "b", None, ["a@example.com"])
        mail.EmailMessage("django message", "b", to=["b@example.com"]).send()
        self.assertEqual([m.subject for m in mail.outbox], ["django", "django message"])
        self.assertEqual(
            [m.sent_using for m in mail.outbox], [EXPECTED_DJANGO_ALIAS] * 2
        )

    def test_outbox_starts_empty(self):
        self.assertEqual(mail.outbox, [])


# Django 6.1 without MAILERS stamps messages with alias None; with MAILERS,
# Django's own mail goes through the default mailer (on 5.2 and 6.0 too).
EXPECTED_DJANGO_ALIAS = "default" if USES_MAILERS else None
