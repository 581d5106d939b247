"""Shared pytest configuration for django_mailkit's tests."""

pytest_plugins = ["tests.smtpserver"]
