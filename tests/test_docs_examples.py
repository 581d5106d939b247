"""
The documentation's Python examples are valid, and its settings pass our checks.

Every ``.. code-block:: python`` in README.rst and docs/ must parse. Every
example that defines ``MAILERS`` (with ``MAILKIT`` when it sets one) is run
and its configuration put through the ``mail`` system checks: an example
that a reader copies must not fail them (W004 on an outbox without a
timeout, an unknown option, a missing host...). W003 is left out: it asks
Django 5.2/6.0 projects for the bridge ``EMAIL_BACKEND``, which examples
mention in prose rather than repeat in each block. The sending guide's
examples are run against in-memory mailers, so a name they use without
defining it fails here.
"""

from __future__ import annotations

import ast
import re
import textwrap
from pathlib import Path

import pytest
from django.core import checks
from django.test import override_settings

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.rst", *(ROOT / "docs").rglob("*.rst")])
DIRECTIVE = re.compile(r"^(\s*)\.\. code-block:: python\s*$")


def python_blocks(path: Path) -> list[tuple[int, str]]:
    """Return (line number, dedented code) for each Python block of a page."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks = []
    index = 0
    while index < len(lines):
        match = DIRECTIVE.match(lines[index])
        if not match:
            index += 1
            continue
        indent = len(match.group(1))
        start = index + 1
        end = start
        while end < len(lines) and (
            not lines[end].strip()
            or len(lines[end]) - len(lines[end].lstrip()) > indent
        ):
            end += 1
        blocks.append((start + 1, textwrap.dedent("\n".join(lines[start:end]))))
        index = end
    return blocks


EXAMPLES = [
    pytest.param(code, id=f"{path.relative_to(ROOT)}:{line}")
    for path in PAGES
    for line, code in python_blocks(path)
]
SETTINGS_EXAMPLES = [
    example
    for example in EXAMPLES
    if re.search(r"^MAILERS = ", example.values[0], re.M)
]


def test_the_pages_have_examples():
    # The extraction itself works: a broken pattern would make every test
    # below pass vacuously.
    assert len(EXAMPLES) > 20
    assert len(SETTINGS_EXAMPLES) > 5


@pytest.mark.parametrize("code", EXAMPLES)
def test_example_is_valid_python(code):
    ast.parse(code)


@pytest.mark.parametrize("code", SETTINGS_EXAMPLES)
def test_settings_example_passes_the_mail_checks(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "<example>", "exec"), namespace)
    overrides = {"MAILERS": namespace["MAILERS"], "MAILKIT": namespace.get("MAILKIT")}
    with override_settings(**overrides):
        problems = [
            f"{message.id}: {message.msg}"
            for message in checks.run_checks(
                tags=["mail"], include_deployment_checks=True
            )
            if message.id != "django_mailkit.W003"
        ]
    assert problems == []


LOCMEM = {"BACKEND": "django_mailkit.backends.locmem.EmailBackend"}
#: Blocks that need the reader's own files or settings modules.
NEEDS_THE_READERS_PROJECT = ("render_to_string", "read_bytes", "EMAIL_BACKEND =")


@pytest.mark.parametrize(
    "code",
    [
        example
        for example in EXAMPLES
        if example.id.startswith("docs/topics/sending.rst")
        and not any(marker in example.values[0] for marker in NEEDS_THE_READERS_PROJECT)
    ],
)
def test_sending_example_sends(code):
    from django.core import mail

    aliases = set(re.findall(r'using="([^"]+)"', code)) | {"default"}
    with override_settings(
        MAILERS={alias: LOCMEM for alias in aliases}, ADMINS=["ops@example.com"]
    ):
        exec(compile(code, "<example>", "exec"), {})
    assert mail.outbox, "the example sent nothing"


def test_the_mailkit_example_lists_every_key_with_its_default():
    # docs/topics/mailers.rst shows the whole MAILKIT dict with its defaults;
    # a key added to conf.py must appear there too, with the same default.
    from tests.test_docs_reference import code_mailkit_defaults

    [code] = [
        example.values[0]
        for example in EXAMPLES
        if example.id.startswith("docs/topics/mailers.rst")
        and example.values[0].lstrip().startswith("MAILKIT = ")
    ]
    namespace: dict = {}
    exec(compile(code, "<example>", "exec"), namespace)
    assert namespace["MAILKIT"] == code_mailkit_defaults()
