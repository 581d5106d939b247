"""File backend: writes the messages of each session to a new file."""

from __future__ import annotations

import email.policy
import os
import uuid
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from .. import conf
from ..rendering import render
from .base import _NOT_PROVIDED, BaseEmailBackend

__all__ = ["EmailBackend"]


class EmailBackend(BaseEmailBackend):
    """
    Write messages to a file in ``file_path`` (development).

    Each backend instance writes one file, named when it first opens: a new
    instance (such as each ``mailers[alias]``) starts a new file, and
    reopening the same instance appends to its file, as in Django.
    """

    # Documented: fail_silently ignores every error while writing, but never
    # a problem with file_path itself (that is configuration).
    silenced_errors = (Exception,)
    legacy_settings = conf.LEGACY_FILE_SETTINGS

    def __init__(
        self,
        fail_silently: Any = _NOT_PROVIDED,
        file_path: str | os.PathLike[str] | None = None,
        **kwargs: Any,
    ) -> None:
        # fail_silently and file_path may come positionally, as in Django.
        super().__init__(fail_silently, **kwargs)
        file_path = self.with_legacy_defaults({"file_path": file_path})["file_path"]
        if file_path is None or file_path == "":
            raise self.django_error(
                "file_path",
                "OPTIONS must define 'file_path'. Set it to the directory to "
                "write messages to.",
                "The EMAIL_FILE_PATH setting must be set to use the file EmailBackend.",
            )
        # abspath, as Django: '..' is resolved and a non-path gets its TypeError.
        path = Path(os.path.abspath(file_path))
        try:
            path.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise self.django_error(
                "file_path",
                f"'file_path' is not a directory: {path}",
                f"Path for saving email messages exists, but is not a directory: "
                f"{path}",
            ) from None
        except OSError as exc:
            raise self.django_error(
                "file_path",
                f"Could not create 'file_path': {path} ({exc})",
                f"Could not create directory for saving email messages: {path} ({exc})",
            ) from exc
        if not os.access(path, os.W_OK | os.X_OK):
            raise self.django_error(
                "file_path",
                f"'file_path' is not writable: {path}",
                f"Could not write to directory: {path}",
            )
        self.file_path = str(path)
        self.stream: IO[bytes] | None = None
        self._fname: str | None = None

    def _get_filename(self) -> str:
        """Return this instance's file: named at its first session, then kept."""
        if self._fname is None:
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            name = f"{stamp}-{uuid.uuid4().hex[:12]}.log"
            self._fname = os.path.join(self.file_path, name)
        return self._fname

    def open(self) -> bool:
        """Open this instance's file for appending, unless it is open."""
        with self._lock:
            if self.stream is not None:
                return False
            # As Django: reopening the same instance appends to its file.
            self.stream = open(self._get_filename(), "ab")
            return True

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            stream, self.stream = self.stream, None
            if stream is not None:
                stream.close()

    def deliver(self, message: Any) -> bool:
        """Append the message's wire form and a separator to the session file."""
        assert self.stream is not None
        data = render(message, email.policy.default).as_bytes()
        self.stream.write(data + b"\n" + b"-" * 79 + b"\n")
        self.stream.flush()
        return True
