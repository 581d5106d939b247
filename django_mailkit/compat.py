"""
Backports of Django 6.1 test-environment behaviour to Django 5.2 and 6.0.

Django 6.1's ``setup_test_environment()`` points every MAILERS alias at the
in-memory backend, and its in-memory backend stamps ``sent_using`` on each
message. Django 5.2 and 6.0 only swap ``EMAIL_BACKEND``. Without this module,
a project on those versions that configures MAILERS would send real mail from
its test suite.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

import django
from django.conf import settings

LOCMEM_BACKEND = "django_mailkit.backends.locmem.EmailBackend"


def install_test_environment_hooks() -> None:
    """Wrap Django's test environment setup/teardown (Django < 6.1 only)."""
    if django.VERSION >= (6, 1):
        return
    from django.test import utils

    if getattr(utils.setup_test_environment, "mailkit_wrapped", False):
        return
    setup = _wrap_setup(utils.setup_test_environment)
    teardown = _wrap_teardown(utils.teardown_test_environment)
    # Django's runner binds these names when its module is imported, which is
    # normally after apps are ready; rebind there too in case it came first.
    for module_name in ("django.test.utils", "django.test.runner", "django.test"):
        module = sys.modules.get(module_name)
        if module is not None and hasattr(module, "setup_test_environment"):
            setattr(module, "setup_test_environment", setup)  # noqa: B010
            setattr(module, "teardown_test_environment", teardown)  # noqa: B010


def _wrap_setup(original: Any) -> Any:
    @functools.wraps(original)
    def setup_test_environment(*args: Any, **kwargs: Any) -> None:
        original(*args, **kwargs)
        from django.test.utils import _TestState

        # Set by the original setup just above; not declared on the class.
        saved = _TestState.saved_data  # type: ignore[attr-defined]
        # Ours stamps sent_using on Django's own messages too.
        settings.EMAIL_BACKEND = LOCMEM_BACKEND
        if hasattr(settings, "MAILERS"):
            saved.mailkit_mailers = settings.MAILERS
            settings.MAILERS = {
                alias: {"BACKEND": LOCMEM_BACKEND} for alias in settings.MAILERS
            }

    setup_test_environment.mailkit_wrapped = True  # type: ignore[attr-defined]
    return setup_test_environment


def _wrap_teardown(original: Any) -> Any:
    @functools.wraps(original)
    def teardown_test_environment(*args: Any, **kwargs: Any) -> None:
        from django.test.utils import _TestState

        saved = getattr(_TestState, "saved_data", None)
        if saved is not None and hasattr(saved, "mailkit_mailers"):
            settings.MAILERS = saved.mailkit_mailers
        original(*args, **kwargs)

    teardown_test_environment.mailkit_wrapped = True  # type: ignore[attr-defined]
    return teardown_test_environment
