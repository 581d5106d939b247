"""MAILERS settings the tests share."""


def outbox_via_smtp(server, *, outbox_options=None, **smtp_options):
    """
    MAILERS with an outbox mailer "default" that delivers through an SMTP
    mailer "smtp" at the test server; smtp_options are added to its OPTIONS.
    """
    return {
        "default": {
            "BACKEND": "django_mailkit.backends.outbox.EmailBackend",
            "OPTIONS": {"deliver_using": "smtp", **(outbox_options or {})},
        },
        "smtp": {
            "BACKEND": "django_mailkit.backends.smtp.EmailBackend",
            "OPTIONS": {"host": server.host, "port": server.port, **smtp_options},
        },
    }
