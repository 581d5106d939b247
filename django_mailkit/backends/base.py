"""The base email backend: the send loop, with hooks for each transport."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from types import TracebackType
from typing import Any, ClassVar

from .. import conf, deprecation
from ..exceptions import InvalidMailer

# RemovedInDjango2028Warning: tells an explicit fail_silently from the default.
_NOT_PROVIDED: Any = object()

__all__ = ["BaseEmailBackend"]


class BaseEmailBackend:
    """
    Base class for email backends.

    ``send_messages()`` owns the loop: open the connection if needed, hand
    each message to ``deliver()``, close what it opened. A subclass
    implements ``deliver()`` and, if it keeps a connection, ``open()`` and
    ``close()``. Options arrive as keyword arguments: a subclass names the
    ones it takes and passes the rest up, where unknown ones are rejected.
    """

    #: Whether delivering reaches real mailboxes (the deploy checks warn when
    #: the default mailer doesn't).
    delivers_mail: ClassVar[bool] = False
    #: Errors that ``fail_silently`` swallows while sending (never
    #: configuration errors).
    silenced_errors: ClassVar[tuple[type[BaseException], ...]] = ()
    #: For a backend built without MAILERS (Django's get_connection(), the
    #: EMAIL_BACKEND setting), the legacy setting each option defaults to.
    legacy_settings: ClassVar[dict[str, str]] = {}
    #: Whether the backend takes the ``fail_silently`` option (Django 6.1's
    #: SMTP, console and file backends do; the others reject it).
    supports_fail_silently: ClassVar[bool] = True

    def __init__(
        self,
        fail_silently: Any = _NOT_PROVIDED,
        *,
        alias: str | None = None,
        _ignore_unknown_kwargs: set[str] | None = None,
        **kwargs: Any,
    ) -> None:
        self.alias = alias
        self._from_settings: set[str] = set()
        # Serialises use of one instance (and its connection) across threads.
        self._lock = threading.RLock()
        if fail_silently is _NOT_PROVIDED:
            fail_silently = False
        elif not self.supports_fail_silently:
            # As in Django 6.1: an option this backend doesn't offer.
            kwargs["fail_silently"] = fail_silently
        self.fail_silently = bool(fail_silently)
        # Legacy call sites (get_connection(**kwargs), send_mail(auth_user=))
        # pass options that only some backends take: those may be ignored.
        for name in _ignore_unknown_kwargs or ():
            kwargs.pop(name, None)
        if kwargs:
            names = ", ".join(repr(name) for name in kwargs)
            class_name = f"{type(self).__module__}.{type(self).__qualname__}"
            if alias is None:
                # RemovedInDjango2028Warning: raise TypeError instead. Built
                # outside MAILERS, Django 6.1 ignores unknown arguments with
                # a warning (none when Django's own code passed them).
                deprecation.warn(
                    deprecation.UNKNOWN_BACKEND_KWARGS.format(
                        class_name=class_name, names=names
                    )
                )
                return
            raise InvalidMailer(
                f"Unknown options {names}. {class_name} does not take them.",
                alias=alias,
                code="unknown_options",
            )

    def with_legacy_defaults(self, options: dict[str, Any]) -> dict[str, Any]:
        """
        Return ``options`` with those left as None read from legacy settings.

        Only a backend built outside MAILERS (``alias`` is None) does this.
        """
        if self.alias is not None:
            return options
        options = dict(options)
        for option, setting in self.legacy_settings.items():
            if options.get(option) is None:
                options[option] = conf.legacy_setting(setting)
                self._from_settings.add(option)
        return options

    def config_error(self, option: str | None, detail: str) -> InvalidMailer:
        """Return the error for a bad ``option``, naming where it was set."""
        setting = None
        if option in self._from_settings:
            setting = self.legacy_settings[option]
        return InvalidMailer(detail, alias=self.alias, option=option, setting=setting)

    def django_error(
        self,
        option: str | None,
        message: str,
        legacy: str | None = None,
        *,
        legacy_class: type[InvalidMailer] = InvalidMailer,
    ) -> InvalidMailer:
        """
        Return a configuration error that Django 6.1 also raises.

        ``message`` starts with Django's sentence for a MAILERS mailer;
        ``legacy`` with its sentence for a backend built without an alias
        (from the ``EMAIL_*`` settings), raised as ``legacy_class``: an
        InvalidMailer that is also Django's type for that error.
        """
        if self.alias is None and legacy is not None:
            return legacy_class(legacy, option=option, at_option=False)
        return InvalidMailer(message, alias=self.alias, option=option, at_option=False)

    def __repr__(self) -> str:
        return (
            f"<{type(self).__module__}.{type(self).__qualname__} alias={self.alias!r}>"
        )

    def open(self) -> bool | None:
        """
        Open the connection if the backend has one and it isn't open.

        Return True if a connection was opened, False if one was already
        open (or the backend has none), None if opening failed silently.
        """
        return False

    def close(self) -> None:
        """Close the connection, if open."""

    def __enter__(self) -> BaseEmailBackend:
        try:
            self.open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def send_messages(self, email_messages: Sequence[Any]) -> int:
        """Send the messages; return how many were sent."""
        if not email_messages:
            return 0
        with self._lock:
            try:
                opened = self.open()
            except self.silenced_errors:
                if not self.fail_silently:
                    raise
                return 0
            if opened is None:
                return 0
            sent = 0
            try:
                for message in email_messages:
                    if self._deliver_one(message):
                        sent += 1
            finally:
                if opened:
                    self.close()
        return sent

    def _deliver_one(self, message: Any) -> bool:
        try:
            return self.deliver(message)
        except self.silenced_errors:
            if not self.fail_silently:
                raise
            return False

    def deliver(self, message: Any) -> bool:
        """Send one message over the open connection; return whether it went."""
        raise NotImplementedError(
            "subclasses of BaseEmailBackend must implement deliver() or "
            "override send_messages()"
        )
