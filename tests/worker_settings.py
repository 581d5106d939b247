"""Settings for worker subprocesses started by the concurrency tests."""

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
# The shared limits (tests/test_limits_concurrency.py), when a test sets them.
if "MAILKIT_SINK_RATE" in os.environ:
    MAILERS["smtp"]["OPTIONS"]["rate"] = os.environ["MAILKIT_SINK_RATE"]
if "MAILKIT_SINK_MAX_CONNECTIONS_TOTAL" in os.environ:
    MAILERS["smtp"]["OPTIONS"]["max_connections_total"] = int(
        os.environ["MAILKIT_SINK_MAX_CONNECTIONS_TOTAL"]
    )
MAILKIT = {
    "USE_TASKS": False,
    "LEASE_SECONDS": float(os.environ.get("MAILKIT_LEASE_SECONDS", "60")),
    "BATCH_SIZE": int(os.environ.get("MAILKIT_BATCH_SIZE", "50")),
    "BACKOFF_BASE": 1,
    "BACKOFF_CAP": 2,
    # The accepted-but-not-recorded window the concurrency tests allow for.
    "RECORD_GROUP_SIZE": int(os.environ.get("MAILKIT_RECORD_GROUP_SIZE", "4")),
}
