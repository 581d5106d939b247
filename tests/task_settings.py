"""
Settings for the processes started by tests/test_task_backends.py.

A small project on a real queueing task backend: MAILKIT_TASKS is "db"
(django-tasks-db) or "rq" (django-tasks-rq on Redis, MAILKIT_REDIS_URL). The
database is a SQLite file (MAILKIT_DB_NAME) or, with MAILKIT_DB=postgresql,
that database on the PostgreSQL server. Mail goes through the outbox to the
SMTP sink on 127.0.0.1:MAILKIT_SINK_PORT.
"""

import os

import django

SECRET_KEY = "django_mailkit-task-tests-not-secret"
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = ["django.contrib.contenttypes", "django_mailkit"]
if django.VERSION < (6, 0):
    INSTALLED_APPS.append("django_tasks")

if os.environ.get("MAILKIT_DB") == "postgresql":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "HOST": os.environ.get("PGHOST", "localhost"),
            "PORT": os.environ.get("PGPORT", "5432"),
            "USER": os.environ.get("PGUSER", "mailkit"),
            "PASSWORD": os.environ.get("PGPASSWORD", "mailkit"),
            "NAME": os.environ["MAILKIT_DB_NAME"],
        }
    }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ["MAILKIT_DB_NAME"],
            # Several processes share the file. A deferred transaction that
            # reads, then writes, fails at once with "database is locked"
            # when another process writes in between (the busy timeout does
            # not apply to that upgrade): take the write lock at BEGIN.
            "OPTIONS": {"timeout": 60, "transaction_mode": "IMMEDIATE"},
        }
    }

KIND = os.environ.get("MAILKIT_TASKS", "db")
if KIND == "db":
    INSTALLED_APPS.append("django_tasks_db")
    TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}
elif KIND == "rq":
    INSTALLED_APPS += ["django_rq", "django_tasks_rq"]
    TASKS = {"default": {"BACKEND": "django_tasks_rq.RQBackend"}}
    RQ_QUEUES = {"default": {"URL": os.environ["MAILKIT_REDIS_URL"]}}
else:
    raise ValueError(f"MAILKIT_TASKS must be 'db' or 'rq', not {KIND!r}.")

MAILERS = {
    "default": {
        "BACKEND": "django_mailkit.backends.outbox.EmailBackend",
        "OPTIONS": {"deliver_using": "smtp"},
    },
    "smtp": {
        "BACKEND": "django_mailkit.backends.smtp.EmailBackend",
        "OPTIONS": {
            "host": "127.0.0.1",
            "port": int(os.environ.get("MAILKIT_SINK_PORT", "25")),
            "timeout": 10,
        },
    },
}
if django.VERSION < (6, 1):
    EMAIL_BACKEND = "django_mailkit.backends.mailer.EmailBackend"
DEFAULT_FROM_EMAIL = "from@example.com"
MAILKIT = {"LEASE_SECONDS": 60, "BACKOFF_BASE": 1, "BACKOFF_CAP": 2}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
