"""Shared pytest configuration for django_mailkit's tests."""

import os

import pytest

pytest_plugins = ["tests.smtpserver"]

# A small project whose tests are run in subprocesses by test_test_runner.py.
collect_ignore = ["runner_project"]

ON_POSTGRES = os.environ.get("MAILKIT_DB") == "postgresql"


def pytest_configure(config):
    if ON_POSTGRES and not _postgres_reachable():
        message = "MAILKIT_DB=postgresql, but no PostgreSQL server answers."
        if os.environ.get("CI"):
            raise pytest.UsageError(message + " CI must run the PostgreSQL pass.")
        pytest.exit(message + " Skipping the PostgreSQL pass.", returncode=0)


def pytest_collection_modifyitems(config, items):
    if ON_POSTGRES:
        return
    skip = pytest.mark.skip(
        reason="runs in the PostgreSQL pass (MAILKIT_DB=postgresql)"
    )
    for item in items:
        if item.get_closest_marker("concurrency"):
            item.add_marker(skip)


def _postgres_reachable():
    import psycopg

    try:
        psycopg.connect(
            host=os.environ.get("PGHOST", "localhost"),
            port=os.environ.get("PGPORT", "5432"),
            user=os.environ.get("PGUSER", "mailkit"),
            password=os.environ.get("PGPASSWORD", "mailkit"),
            dbname="postgres",
            connect_timeout=3,
        ).close()
    except psycopg.OperationalError:
        return False
    return True
