"""
Settings of the django_mailkit demo: SQLite, the admin, and an outbox that
delivers through SMTP to the local sink that ``manage.py rundemo`` runs.

Not for production: the secret key is public and DEBUG is on.
"""

import os
from pathlib import Path

import django

BASE_DIR = Path(__file__).resolve().parent.parent
#: Everything the demo writes: the database and what the sink received.
VAR_DIR = BASE_DIR / "var"

SECRET_KEY = "django_mailkit-demo-not-secret"
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_mailkit",
    "demo",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "demo.urls"

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
        "NAME": VAR_DIR / "db.sqlite3",
        # The web server's threads and the delivery worker share the file.
        "OPTIONS": {
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL;",
        },
    }
}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
STATIC_URL = "static/"

# Mail: everything the site sends is queued in the outbox ("default") and
# delivered by the "smtp" mailer to the demo's sink on this port.
DEMO_SMTP_PORT = int(os.environ.get("DEMO_SMTP_PORT", "8025"))
MAILERS = {
    "default": {
        "BACKEND": "django_mailkit.backends.outbox.EmailBackend",
        "OPTIONS": {"deliver_using": "smtp"},
    },
    "smtp": {
        "BACKEND": "django_mailkit.backends.smtp.EmailBackend",
        "OPTIONS": {"host": "127.0.0.1", "port": DEMO_SMTP_PORT, "timeout": 10},
    },
    "console": {"BACKEND": "django_mailkit.backends.console.EmailBackend"},
}
if django.VERSION < (6, 1):
    # Django's own mail (password resets, error reports) through MAILERS.
    EMAIL_BACKEND = "django_mailkit.backends.mailer.EmailBackend"
# Retries come quickly in the demo.
MAILKIT = {"BACKOFF_BASE": 5, "BACKOFF_CAP": 60}

DEFAULT_FROM_EMAIL = "Demo site <demo@example.com>"
SERVER_EMAIL = "server@example.com"
ADMINS = ["Demo Admin <admin@example.com>"]
MANAGERS = ["manager@example.com"]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"demo": {"format": "  [%(name)s] %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "demo"}},
    "loggers": {
        "django_mailkit": {"handlers": ["console"], "level": "WARNING"},
        # Django 6's immediate task backend logs each task's start and end.
        "django.tasks": {"level": "WARNING"},
    },
}
