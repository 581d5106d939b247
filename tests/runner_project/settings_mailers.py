"""A project that configures MAILERS (pointing at a port where nothing listens)."""

SECRET_KEY = "runner-project"
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django_mailkit",
]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
USE_TZ = True
ADMINS = ["admin@example.com"]
# If a message escaped the test environment it would fail: port 9 is closed.
MAILERS = {
    "default": {"OPTIONS": {"host": "127.0.0.1", "port": 9}},
    "alerts": {
        "BACKEND": "django.core.mail.backends.smtp.EmailBackend",
        "OPTIONS": {"host": "127.0.0.1", "port": 9},
    },
}

import django  # noqa: E402

if django.VERSION < (6, 1):
    # Django's own mail goes through MAILERS too.
    EMAIL_BACKEND = "django_mailkit.backends.mailer.EmailBackend"
