"""Sphinx configuration for django_mailkit's documentation."""

import os
import sys
from pathlib import Path

import django

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# autodoc imports the app, so Django needs settings: the test suite's will do.
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
django.setup()

project = "django_mailkit"
author = "django_mailkit developers"
copyright = "2026, django_mailkit developers"  # noqa: A001

# No intersphinx: the build runs offline, like CI.
extensions = ["sphinx.ext.autodoc"]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True}


exclude_patterns = ["_build"]

# linkcheck (tox -e docs) checks the links inside these pages: local files
# and anchors. External sites are left out, so CI never depends on them.
linkcheck_ignore = [r"https?://"]
html_theme = "alabaster"
html_title = "django_mailkit"
nitpicky = False
