"""File backend: writes the messages of each session to a new file."""

from __future__ import annotations

import email.policy
import os
import uuid
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from .. import conf
from ..message import render
from .base import BaseEmailBackend

__all__ = ["EmailBackend"]


class EmailBackend(BaseEmailBackend):
    """
    Write messages to files in ``file_path`` (development).

    Each session (from ``open()`` to ``close()``, or one ``send_messages()``
    call) writes one new file.
    """

    # Documented: fail_silently ignores every error while writing, but never
    # a problem with file_path itself (that is configuration).
    silenced_errors = (Exception,)
    legacy_settings = conf.LEGACY_FILE_SETTINGS

    def __init__(
        self, *, file_path: str | os.PathLike[str] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        file_path = self.with_legacy_defaults({"file_path": file_path})["file_path"]
        if file_path is None or file_path == "":
            raise self.config_error(
                "file_path", "is required: the directory to write messages to."
            )
        path = Path(file_path).absolute()
        try:
            path.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise self.config_error(
                "file_path", f"{str(path)!r} exists but is not a directory."
            ) from None
        except OSError as exc:
            raise self.config_error(
                "file_path", f"could not create directory {str(path)!r}: {exc}."
            ) from exc
        if not os.access(path, os.W_OK | os.X_OK):
            raise self.config_error(
                "file_path", f"directory {str(path)!r} is not writable."
            )
        self.file_path = str(path)
        self.stream: IO[bytes] | None = None

    def open(self) -> bool:
        """Start a new session file unless one is open."""
        with self._lock:
            if self.stream is not None:
                return False
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            name = f"{stamp}-{uuid.uuid4().hex[:12]}.log"
            # "x": never append to (or clobber) another session's file.
            self.stream = open(os.path.join(self.file_path, name), "xb")
            return True

    def close(self) -> None:
        """Close the session file."""
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
