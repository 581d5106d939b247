"""Shared pytest configuration for django_mailkit's tests."""

pytest_plugins = ["tests.smtpserver"]

# A small project whose tests are run in subprocesses by test_test_runner.py.
collect_ignore = ["runner_project"]
