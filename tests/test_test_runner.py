"""
No mailer delivers real mail under a test runner: every message, sent with
django_mailkit or with django.core.mail, lands in django.core.mail.outbox.

A small project (tests/runner_project) whose mailers point at a closed port
runs its own tests in a subprocess, under Django's runner and pytest-django.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ROOT / "tests" / "runner_project"


def run(args, settings_module):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
        "DJANGO_SETTINGS_MODULE": f"runner_project.{settings_module}",
    }
    env.pop("PYTEST_ADDOPTS", None)
    return subprocess.run(
        [sys.executable, *args],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


SETTINGS = ["settings_mailers", "settings_legacy"]


@pytest.mark.parametrize("settings_module", SETTINGS)
def test_django_test_runner(settings_module):
    result = run(
        ["-m", "django", "test", "runner_project.test_outbox", "-v", "2"],
        settings_module,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Ran 3 tests" in output
    assert "OK" in output


@pytest.mark.parametrize("settings_module", SETTINGS)
def test_pytest_django(settings_module):
    result = run(
        [
            "-m",
            "pytest",
            "-p",
            "pytest_django",
            "-c",
            os.devnull,
            "--rootdir",
            str(PROJECT),
            "-q",
            "test_outbox.py",
            "test_pytest_style.py",
        ],
        settings_module,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "5 passed" in output


def test_a_failure_is_reported(tmp_path):
    """The harness itself can fail: a test expecting real delivery fails."""
    result = run(
        [
            "-c",
            "import django; django.setup(); import django_mailkit; "
            "django_mailkit.send_mail('s', 'b', None, ['a@example.com'])",
        ],
        "settings_mailers",
    )
    # Outside a test environment the closed port really is tried.
    assert result.returncode != 0
    assert "ConnectionRefusedError" in result.stderr
