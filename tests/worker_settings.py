"""Settings for worker subprocesses started by tests/test_concurrency.py."""

import os

from tests.settings import *  # noqa: F403

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
MAILKIT = {
    "USE_TASKS": False,
    "LEASE_SECONDS": float(os.environ.get("MAILKIT_LEASE_SECONDS", "60")),
    "BATCH_SIZE": int(os.environ.get("MAILKIT_BATCH_SIZE", "50")),
    "BACKOFF_BASE": 1,
    "BACKOFF_CAP": 2,
}
