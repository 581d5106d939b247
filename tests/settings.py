"""Settings for django_mailkit's test suite."""

import os

SECRET_KEY = "django_mailkit-tests-not-secret"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django_mailkit",
]

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": ":memory:",
    }
}

# The suite runs under a configuration that uses MAILERS, as new projects do.
# Tests of the legacy EMAIL_* path override MAILERS away.
MAILERS = {
    "default": {
        "BACKEND": "django_mailkit.backends.smtp.EmailBackend",
        "OPTIONS": {"host": "localhost"},
    },
    "notifications": {
        "BACKEND": "django_mailkit.backends.smtp.EmailBackend",
        "OPTIONS": {"host": "localhost"},
    },
}
DEFAULT_FROM_EMAIL = "webmaster@example.com"
SERVER_EMAIL = "server@example.com"
ADMINS = ["Admin One <admin1@example.com>", "admin2@example.com"]
MANAGERS = ["manager@example.com"]
