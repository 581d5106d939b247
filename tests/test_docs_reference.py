"""
The reference pages list exactly what the code has.

docs/ref/settings.rst and docs/ref/checks.rst are written by hand, so that
each entry can say what it is for; these tests keep them complete and exact.
What the code has is collected from the code itself:

- check ids: every ``"django_mailkit.<letter><3 digits>"`` literal in the
  package's source (a check's ``id=``), wherever it is registered;
- ``MAILKIT`` keys and their defaults: every ``_mailkit("KEY", default, ...)``
  call in django_mailkit/conf.py;
- backend ``OPTIONS``: the keyword parameters of each backend's ``__init__``
  (its whole class hierarchy) in django_mailkit/backends/, ``fail_silently``
  where the backend supports it;
- legacy settings: each backend's ``legacy_settings`` mapping;
- Django settings the package reads: ``settings.NAME``,
  ``getattr(settings, "NAME")`` and ``legacy_setting("NAME")``;
- extras: ``[project.optional-dependencies]`` in pyproject.toml, each listed
  on docs/installation.rst.
- management commands: each ``--option`` of each command and subcommand
  (their argparse parsers, Django's own options left out) must appear on a
  docs page that names the command.

A failure says what to add, where, and gives the reST to paste.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
import tomllib
from pathlib import Path

import django_mailkit
from django_mailkit import conf
from django_mailkit.backends.base import BaseEmailBackend

PACKAGE = Path(django_mailkit.__file__).resolve().parent
DOCS = Path(__file__).resolve().parent.parent / "docs"
SETTINGS_PAGE = DOCS / "ref" / "settings.rst"
INSTALLATION_PAGE = DOCS / "installation.rst"
CHECKS_PAGE = DOCS / "ref" / "checks.rst"

# Parameters of a backend's __init__ that are not OPTIONS.
NOT_OPTIONS = {"self", "alias", "_ignore_unknown_kwargs"}


def _labels(text: str, prefix: str) -> set[str]:
    """The names of the reST labels ``.. _<prefix><name>:`` in ``text``."""
    pattern = rf"^\.\. _{re.escape(prefix)}([\w.]+):\s*$"
    return set(re.findall(pattern, text, re.MULTILINE))


def _sections(text: str, prefix: str) -> dict[str, str]:
    """Each ``.. _<prefix><name>:`` label's text, up to the next label."""
    parts = re.split(r"^(\.\. _[\w.-]+:)\s*$", text, flags=re.MULTILINE)
    sections = {}
    for label, body in zip(parts[1::2], parts[2::2], strict=True):
        if label.startswith(f".. _{prefix}"):
            sections[label[len(f".. _{prefix}") : -1]] = body
    return sections


def _literal(value: object) -> str:
    """``value`` as the page writes it: a Python literal, strings in "..."."""
    return f'"{value}"' if isinstance(value, str) else repr(value)


def _report(problems: list[str]) -> str:
    return "\n\n".join(problems)


# Check ids.


def code_check_ids() -> set[str]:
    ids = set()
    for path in PACKAGE.rglob("*.py"):
        ids |= set(
            re.findall(r"""["'](django_mailkit\.[A-Z]\d{3})["']""", path.read_text())
        )
    return ids


def test_every_check_id_is_documented():
    text = CHECKS_PAGE.read_text()
    documented = _labels(text, "django_mailkit.")
    documented = {f"django_mailkit.{name}" for name in documented}
    code = code_check_ids()
    assert code, "no check ids found in django_mailkit/: the collector is broken"
    problems = []
    for check_id in sorted(code - documented):
        title = f"``{check_id}``: <what is wrong, in a few words>"
        problems.append(
            f"docs/ref/checks.rst: system check {check_id} is not documented. "
            f"Add a section under 'Errors' or 'Warnings', in id order:\n\n"
            f".. _{check_id}:\n\n{title}\n{'~' * len(title)}\n\n**Triggered "
            "by** <the configuration that makes it fire>.\n\n**Fix:** <what to "
            "change>."
        )
    problems += [
        f"docs/ref/checks.rst documents {check_id}, which no code in "
        "django_mailkit/ reports: remove its section (or restore the check)."
        for check_id in sorted(documented - code)
    ]
    assert not problems, _report(problems)


def test_every_documented_check_says_what_triggers_it_and_the_fix():
    sections = _sections(CHECKS_PAGE.read_text(), "django_mailkit.")
    assert sections
    incomplete = [
        f"docs/ref/checks.rst: the section of django_mailkit.{name} needs a "
        "'**Triggered by** ...' paragraph and a '**Fix:** ...' paragraph."
        for name, body in sorted(sections.items())
        if "**Triggered by**" not in body or "**Fix:**" not in body
    ]
    assert not incomplete, _report(incomplete)


# MAILKIT keys.


def code_mailkit_defaults() -> dict[str, object]:
    """Each MAILKIT key read in conf.py, with the default beside it."""
    tree = ast.parse(Path(conf.__file__).read_text())
    defaults = {}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "_mailkit"
        ):
            key = ast.literal_eval(node.args[0])
            defaults[key] = ast.literal_eval(node.args[1])
    return defaults


def test_every_mailkit_key_is_documented_with_its_default():
    sections = _sections(SETTINGS_PAGE.read_text(), "mailkit-")
    code = code_mailkit_defaults()
    assert len(code) >= 8, f"found only {sorted(code)}: the collector is broken"
    problems = []
    for key, default in sorted(code.items()):
        if key not in sections:
            problems.append(
                f"docs/ref/settings.rst: MAILKIT[{key!r}] (django_mailkit/conf.py) "
                "is not documented. Add to the 'MAILKIT' section:\n\n"
                f".. _mailkit-{key}:\n\n``{key}``\n{'~' * (len(key) + 4)}\n\n"
                f"Default: ``{_literal(default)}``\n\n<what it does, its unit>"
            )
            continue
        found = re.search(r"^Default: ``(.+?)``", sections[key], re.MULTILINE)
        if found is None or ast.literal_eval(found.group(1)) != default:
            problems.append(
                f"docs/ref/settings.rst: MAILKIT[{key!r}] is documented with "
                f"{found.group(0) if found else 'no Default: line'}, but "
                f"django_mailkit/conf.py's default is {default!r}: write "
                f"'Default: ``{_literal(default)}``'."
            )
    problems += [
        f"docs/ref/settings.rst documents MAILKIT[{key!r}], which "
        "django_mailkit/conf.py doesn't read: remove it (or add its getter)."
        for key in sorted(set(sections) - set(code))
    ]
    assert not problems, _report(problems)


# Backend OPTIONS.


def backends() -> dict[str, type[BaseEmailBackend]]:
    """Each module of django_mailkit.backends with its EmailBackend."""
    found = {}
    package = importlib.import_module("django_mailkit.backends")
    for module_info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"django_mailkit.backends.{module_info.name}")
        backend = getattr(module, "EmailBackend", None)
        if isinstance(backend, type) and issubclass(backend, BaseEmailBackend):
            found[module_info.name] = backend
    return found


def backend_options(backend: type[BaseEmailBackend]) -> set[str]:
    """The OPTIONS ``backend`` takes: its keyword parameters, base classes too."""
    options = set()
    for klass in backend.__mro__:
        if "__init__" not in vars(klass):
            continue
        for parameter in inspect.signature(vars(klass)["__init__"]).parameters.values():
            if parameter.kind in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL):
                continue
            options.add(parameter.name)
    options -= NOT_OPTIONS
    if not backend.supports_fail_silently:
        options.discard("fail_silently")
    return options


def test_every_backend_option_is_documented():
    text = SETTINGS_PAGE.read_text()
    found = backends()
    assert {"smtp", "outbox", "console", "filebased", "locmem", "dummy"} <= set(found)
    problems = []
    documented_backends = _labels(text, "ref-backend-") - {"options"}
    for name, backend in sorted(found.items()):
        path = f"django_mailkit.backends.{name}.EmailBackend"
        if name not in documented_backends:
            title = f"<Kind>: ``{path}``"
            problems.append(
                f"docs/ref/settings.rst: the backend {path} is not documented. "
                "Add a section under 'Backend OPTIONS':\n\n"
                f".. _ref-backend-{name}:\n\n{title}\n{'~' * len(title)}\n\n"
                "<what it does>"
            )
        documented = _labels(text, f"option-{name}-")
        for option in sorted(backend_options(backend) - documented):
            problems.append(
                f"docs/ref/settings.rst: OPTIONS[{option!r}] of {path} is not "
                f"documented. Add it to the section '.. _ref-backend-{name}:' "
                f"(each backend that takes it lists it):\n\n"
                f".. _option-{name}-{option}:\n\n``{option}``\n"
                "    Default: <the default>. <what it does; its range>"
            )
        for option in sorted(documented - backend_options(backend)):
            problems.append(
                f"docs/ref/settings.rst documents OPTIONS[{option!r}] of {path}, "
                "which its __init__ doesn't take: remove "
                f"'.. _option-{name}-{option}:' and its entry."
            )
    problems += [
        f"docs/ref/settings.rst documents a backend {name!r} that "
        "django_mailkit/backends/ doesn't have: remove its section."
        for name in sorted(documented_backends - set(found))
    ]
    assert not problems, _report(problems)


def test_option_collector_sees_what_the_registry_accepts():
    # The collector must agree with what building a mailer accepts, or the
    # test above could pass while the page misses options.
    from django.core.exceptions import ImproperlyConfigured

    from django_mailkit.exceptions import InvalidMailer

    for name, backend in backends().items():
        for option in backend_options(backend):
            try:
                backend(alias="probe", **{option: object()})
            except InvalidMailer as exc:
                assert exc.code != "unknown_options", (name, option, exc)
            except (ImproperlyConfigured, TypeError, ValueError, OSError):
                pass  # a bad value for a known option: what we wanted to know
        try:
            backend(alias="probe", not_an_option=1)
        except InvalidMailer as exc:
            assert exc.code == "unknown_options", (name, exc)
        else:
            raise AssertionError(f"{name} accepted an unknown option")


def test_every_legacy_setting_is_documented():
    text = SETTINGS_PAGE.read_text()
    problems = []
    for backend in backends().values():
        for option, setting in sorted(backend.legacy_settings.items()):
            if not re.search(rf"^``{setting}``\s+``{option}``", text, re.MULTILINE):
                problems.append(
                    f"docs/ref/settings.rst: {setting} (the legacy fallback of "
                    f"{backend.__module__}'s {option!r}) is missing from the "
                    f"table in 'Legacy EMAIL_* settings'. Add the row:\n\n"
                    f"``{setting}``{' ' * max(1, 30 - len(setting))}``{option}``"
                )
    assert not problems, _report(problems)


# Django settings the package reads.


def code_settings_read() -> set[str]:
    names = set()
    patterns = [
        r"\bsettings\.([A-Z][A-Z0-9_]+)\b",
        r"""getattr\(\s*(?:settings|_wrapped_settings\(\)),\s*["']([A-Z][A-Z0-9_]+)""",
        r"""legacy_setting\(\s*["']([A-Z][A-Z0-9_]+)""",
        r"""staff_addresses\(\s*["']([A-Z][A-Z0-9_]+)""",
    ]
    for path in PACKAGE.rglob("*.py"):
        source = path.read_text()
        for pattern in patterns:
            names |= set(re.findall(pattern, source))
    return names


def test_every_setting_read_is_documented():
    text = SETTINGS_PAGE.read_text()
    names = code_settings_read()
    assert {"MAILERS", "MAILKIT", "DEFAULT_FROM_EMAIL", "EMAIL_BACKEND"} <= names
    missing = sorted(name for name in names if f"``{name}``" not in text)
    assert not missing, (
        f"docs/ref/settings.rst doesn't mention the settings {missing}, which "
        "django_mailkit/ reads. Add each (as ``NAME``, with what it is used "
        "for) under 'Django settings it reads', or the section it belongs to."
    )


# Extras.


def test_every_extra_is_on_the_installation_page():
    pyproject = tomllib.loads((DOCS.parent / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    text = INSTALLATION_PAGE.read_text()
    listed = set(re.findall(r"^``([\w-]+)``\n    ", text, re.MULTILINE))
    problems = [
        f"docs/installation.rst: the extra {extra!r} (pyproject.toml) is not "
        f"listed under 'Optional packages'. Add, in the extras' list:\n\n"
        f"``{extra}``\n    <what it is for>: installs <its packages>."
        for extra in sorted(set(extras) - listed)
    ]
    assert not problems, _report(problems)


# Management commands.


def command_options() -> dict[str, set[str]]:
    """Each command (and subcommand) of the package, with its --options."""
    import argparse

    from django.core.management import find_commands, load_command_class
    from django.core.management.base import BaseCommand

    django_own = {
        option
        for action in BaseCommand().create_parser("manage.py", "x")._actions
        for option in action.option_strings
    }
    found: dict[str, set[str]] = {}

    def walk(parser: argparse.ArgumentParser, name: str) -> None:
        found[name] = set()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub, subparser in action.choices.items():
                    walk(subparser, f"{name} {sub}")
            found[name] |= {
                option
                for option in action.option_strings
                if option.startswith("--") and option not in django_own
            }

    for name in find_commands(str(PACKAGE / "management")):
        command = load_command_class("django_mailkit", name)
        walk(command.create_parser("manage.py", name), name)
    return found


def test_every_command_option_is_documented():
    pages = {
        path.relative_to(DOCS.parent).as_posix(): path.read_text()
        for path in sorted(DOCS.rglob("*.rst"))
    }
    found = command_options()
    assert {"mailkit_worker", "mailkit_outbox list"} <= set(found)
    problems = []
    for name, options in sorted(found.items()):
        command, *sub = name.split()
        # Documented where the command is: any page that names it.
        text = "\n".join(t for t in pages.values() if command in t)
        if sub and not re.search(
            rf"\b{command}\b[^\n]*\b{sub[0]}\b|^{sub[0]}\n[-=~^]", text, re.MULTILINE
        ):
            problems.append(
                f"docs: 'manage.py {name}' is not documented. Describe it in the "
                f"{command} section of docs/topics/commands.rst."
            )
        for option in sorted(options):
            if not re.search(rf"{re.escape(option)}\b", text):
                problems.append(
                    f"docs: 'manage.py {name} {option}' is not documented. Add it "
                    f"to the {command} section of docs/topics/commands.rst (or "
                    "to the page that describes the command), with what it does "
                    "and its default."
                )
    assert not problems, _report(problems)
