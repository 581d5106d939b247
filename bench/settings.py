"""Settings for the benchmarks (bench/bench.py and its worker processes)."""

import os

SECRET_KEY = "django_mailkit-bench"
USE_TZ = True
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django_mailkit",
]
DEFAULT_FROM_EMAIL = "bench@example.com"

# The outbox drain needs PostgreSQL (started by .ci/services); the other
# benchmarks don't touch the database.
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": os.environ.get("PGHOST", "localhost"),
        "PORT": os.environ.get("PGPORT", "5432"),
        "USER": os.environ.get("PGUSER", "mailkit"),
        "PASSWORD": os.environ.get("PGPASSWORD", "mailkit"),
        "NAME": os.environ.get("BENCH_DB_NAME", "mailkit_bench"),
    }
}

MAILERS = {
    "default": {
        "BACKEND": "django_mailkit.backends.outbox.EmailBackend",
        "OPTIONS": {"deliver_using": "smtp"},
    },
    "smtp": {
        "OPTIONS": {
            "host": "127.0.0.1",
            "port": int(os.environ.get("BENCH_SINK_PORT", "25")),
            "timeout": 30,
        }
    },
}
if os.environ.get("BENCH_SINK_RATE"):
    # bench.py's rate limit section.
    MAILERS["smtp"]["OPTIONS"]["rate"] = os.environ["BENCH_SINK_RATE"]
MAILKIT = {"USE_TASKS": False}

import django  # noqa: E402

if django.VERSION < (6, 1):
    # Django's own mail through MAILERS too (system check W003).
    EMAIL_BACKEND = "django_mailkit.backends.mailer.EmailBackend"
