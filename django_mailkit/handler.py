"""
The mailer registry: ``mailers[alias]`` builds the backend for an alias.

With ``MAILERS`` defined, each alias is built from its ``BACKEND`` and
``OPTIONS``. Without it, there is one alias, ``"default"``, built from the
legacy ``EMAIL_BACKEND`` and ``EMAIL_*`` settings, as Django 6.1 does.

Django's built-in backend paths (``django.core.mail.backends.<name>``) are
served by django_mailkit's backend of the same name, so a configuration
copied from Django's documentation behaves the same on every Django version.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from django.conf import settings
from django.utils.module_loading import import_string

from . import conf, deprecation
from .backends.base import BaseEmailBackend
from .exceptions import (
    InvalidMailer,
    InvalidMailerImportError,
    InvalidMailerModuleNotFoundError,
    MailerDoesNotExist,
)

__all__ = [
    "DEFAULT_BACKEND",
    "DEFAULT_MAILER_ALIAS",
    "DEFAULT_MAILER_BACKEND",
    "MailersHandler",
    "mailers",
]

DEFAULT_MAILER_ALIAS = "default"
#: The BACKEND of a MAILERS entry that doesn't name one.
DEFAULT_BACKEND = "django_mailkit.backends.smtp.EmailBackend"
#: Django 6.1's name for it.
DEFAULT_MAILER_BACKEND = DEFAULT_BACKEND

_DJANGO_BACKENDS = "django.core.mail.backends."
_BUILTIN_NAMES = frozenset({"smtp", "console", "filebased", "locmem", "dummy"})


def resolve_backend_path(path: str) -> str:
    """Map Django's built-in backend paths onto django_mailkit's."""
    if path.startswith(_DJANGO_BACKENDS) and path.endswith(".EmailBackend"):
        name = path[len(_DJANGO_BACKENDS) : -len(".EmailBackend")]
        if name in _BUILTIN_NAMES:
            return f"django_mailkit.backends.{name}.EmailBackend"
    return path


class MailersHandler:
    """A read-only mapping from mailer alias to a new backend instance."""

    def __getitem__(self, alias: str, /) -> BaseEmailBackend:
        return self.create(alias)

    def __contains__(self, alias: object, /) -> bool:
        return alias in self.aliases()

    def __iter__(self) -> Iterator[str]:
        return iter(self.aliases())

    def get(self, alias: str, /, default: Any = None) -> Any:
        """Return ``mailers[alias]``, or ``default`` if the alias is undefined."""
        try:
            return self[alias]
        except MailerDoesNotExist:
            return default

    @property
    def default(self) -> BaseEmailBackend:
        """The default mailer, ``mailers["default"]``."""
        return self[DEFAULT_MAILER_ALIAS]

    def aliases(self) -> list[str]:
        """Return the configured aliases."""
        configs = conf.mailers_setting()
        return [DEFAULT_MAILER_ALIAS] if configs is None else list(configs)

    def create(
        self, alias: str, /, *, overrides: dict[str, Any] | None = None
    ) -> BaseEmailBackend:
        """
        Build the backend for ``alias``.

        ``overrides`` are options from legacy call sites (``fail_silently``,
        ``auth_user``...); a backend that doesn't take one ignores it.
        """
        configs = conf.mailers_setting()
        if configs is None:
            if alias != DEFAULT_MAILER_ALIAS:
                raise MailerDoesNotExist(alias=alias, configured=[])
            # RemovedInDjango2028Warning: the default mailer from EMAIL_*.
            warn_if_no_default_mailer()
            return self.create_legacy(overrides=overrides)
        try:
            config = configs[alias]
        except KeyError:
            raise MailerDoesNotExist(alias=alias, configured=list(configs)) from None
        if not isinstance(config, dict):
            raise InvalidMailer(
                f"must be a dict with 'BACKEND' and 'OPTIONS', not "
                f"{type(config).__name__}.",
                alias=alias,
            )
        unknown = set(config) - {"BACKEND", "OPTIONS"}
        if unknown:
            raise InvalidMailer(
                f"unknown keys {', '.join(map(repr, sorted(unknown)))}; a mailer "
                "takes only 'BACKEND' and 'OPTIONS'.",
                alias=alias,
            )
        options = config.get("OPTIONS") or {}
        if not isinstance(options, dict):
            raise InvalidMailer("'OPTIONS' must be a dict.", alias=alias)
        if "alias" in options:
            raise InvalidMailer(
                "OPTIONS must not define 'alias'. It is set from the MAILERS key.",
                alias=alias,
                option="alias",
                at_option=False,
            )
        path = config.get("BACKEND", DEFAULT_BACKEND)
        backend_class = self.import_backend(path, alias=alias)
        kwargs = dict(options)
        if overrides:
            kwargs.update(overrides)
            if issubclass(backend_class, BaseEmailBackend):
                kwargs["_ignore_unknown_kwargs"] = set(overrides)
        return backend_class(alias=alias, **kwargs)

    def create_legacy(
        self,
        backend: str | None = None,
        *,
        overrides: dict[str, Any] | None = None,
    ) -> BaseEmailBackend:
        """
        Build a backend without MAILERS: ``backend``, or EMAIL_BACKEND.

        Built without an alias (``alias`` is None, as Django 6.1 does), the
        SMTP and file backends read their options from the legacy ``EMAIL_*``
        settings; ``overrides`` come first.
        """
        path = backend or conf.legacy_setting(
            "EMAIL_BACKEND", "django.core.mail.backends.smtp.EmailBackend"
        )
        backend_class = self.import_backend(
            path, setting="EMAIL_BACKEND" if backend is None else None
        )
        kwargs = dict(overrides or {})
        if issubclass(backend_class, BaseEmailBackend):
            if kwargs:
                kwargs["_ignore_unknown_kwargs"] = set(kwargs)
            # Given explicitly (as None): built by the registry, not directly.
            kwargs["alias"] = None
        return backend_class(**kwargs)

    def import_backend(
        self, path: str, *, alias: str | None = None, setting: str | None = None
    ) -> type[BaseEmailBackend]:
        """
        Import a backend class from its dotted path, with Django's error.

        For a MAILERS entry that is an InvalidMailer ("Could not find
        BACKEND..."); for ``EMAIL_BACKEND`` or a path given to
        get_connection(), Django lets the ImportError through, so the error
        is also an ImportError, with the same message and then where the
        path came from.
        """
        try:
            backend_class: type[BaseEmailBackend] = import_string(
                resolve_backend_path(path)
            )
            return backend_class
        except ImportError as exc:
            if alias is not None:
                raise InvalidMailer(
                    f"Could not find BACKEND {path!r}: {exc}",
                    alias=alias,
                    code="backend_import",
                ) from exc
            source = f"the {setting} setting" if setting else "the backend path"
            error_class = (
                InvalidMailerModuleNotFoundError
                if isinstance(exc, ModuleNotFoundError)
                else InvalidMailerImportError
            )
            raise error_class(
                f"{exc} (importing {path!r} from {source})",
                code="backend_import",
            ) from exc


# RemovedInDjango2028Warning: the whole function.
def warn_if_no_default_mailer() -> None:
    """
    Warn that Django 2028 has no default mailer, as Django 6.1 does.

    Only when MAILERS is not defined and no legacy EMAIL_* setting is
    either: a project that sets those has already been warned about them.
    """
    if conf.mailers_setting() is not None:
        return
    # (django-stubs types the lazy settings as Settings.)
    overridden = settings.is_overridden  # type: ignore[misc]
    if not any(overridden(name) for name in conf.DEPRECATED_SETTINGS):
        deprecation.warn(deprecation.NO_DEFAULT_MAILER, internal_ok=False)


mailers = MailersHandler()
