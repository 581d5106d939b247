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
    "django.contrib.staticfiles",
    "django_mailkit",
]

# The admin (tests/test_admin.py, tests/test_admin_browser.py).
ROOT_URLCONF = "tests.urls"
STATIC_URL = "static/"

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    # As in every new project: the admin's HTML preview must work with it.
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
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

# The suite runs on SQLite; MAILKIT_DB=postgresql runs it (the parts marked
# "postgres") against the PostgreSQL server that .ci/services starts.
if os.environ.get("MAILKIT_DB") == "postgresql":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "HOST": os.environ.get("PGHOST", "localhost"),
            "PORT": os.environ.get("PGPORT", "5432"),
            "USER": os.environ.get("PGUSER", "mailkit"),
            "PASSWORD": os.environ.get("PGPASSWORD", "mailkit"),
            "NAME": os.environ.get("MAILKIT_DB_NAME", "mailkit"),
            # One test database per tox environment, so they can run at once.
            "TEST": {"NAME": os.environ.get("MAILKIT_TEST_DB_NAME", "test_mailkit")},
        }
    }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get("MAILKIT_DB_NAME", ":memory:"),
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

# Retries come quickly in tests.
MAILKIT = {"BACKOFF_BASE": 1, "BACKOFF_CAP": 2}

try:  # The Tasks backport, on Django < 6.0 (tox installs it there).
    import django_tasks  # noqa: F401
except ImportError:
    pass
else:
    import django

    if django.VERSION < (6, 0):
        INSTALLED_APPS.append("django_tasks")
