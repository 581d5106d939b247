"""A project still on the legacy EMAIL_* settings."""

import warnings

SECRET_KEY = "runner-project"
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django_mailkit",
]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
USE_TZ = True
ADMINS = ["admin@example.com"]
EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
EMAIL_HOST = "127.0.0.1"
EMAIL_PORT = 9
# Django 6.1 deprecates these settings; that is not what this project tests.
warnings.filterwarnings("ignore", r"The EMAIL_\w+ setting is deprecated")
