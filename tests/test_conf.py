"""MAILKIT values a worker can't run with are refused, naming the key."""

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from django_mailkit import conf


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("LEASE_SECONDS", float("nan"), "must be a finite number (got nan)"),
        ("LEASE_SECONDS", float("inf"), "must be a finite number (got inf)"),
        ("LEASE_SECONDS", 0, "must be more than 0"),
        ("BACKOFF_BASE", float("nan"), "must be a finite number (got nan)"),
        ("BACKOFF_CAP", float("-inf"), "must be a finite number (got -inf)"),
    ],
)
def test_a_number_that_is_not_finite_or_zero_lease_is_refused(key, value, message):
    getter = getattr(conf, key.lower())
    with override_settings(MAILKIT={key: value}):
        with pytest.raises(ImproperlyConfigured) as raised:
            getter()
    assert str(raised.value).startswith(f"MAILKIT['{key}'] {message}")
