"""``manage.py mailkit_suppressions``: import and export the suppression list as CSV."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import IO, Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ...models import Suppression, SuppressionReason
from ...suppression_csv import MAX_ERRORS_SHOWN, RowError, export_csv, import_csv
from ..options import mailer_alias, printable


class Command(BaseCommand):
    help = (
        "Import or export the suppression list (addresses the outbox no longer "
        "sends to) as CSV with a header line: address,mailer,reason,smtp_code,"
        "smtp_reply,source,created_at (only address is required on import)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

        imports = sub.add_parser(
            "import",
            help="Add the file's addresses to the list; those already listed "
            "are left as they are. Every row is checked first: one bad row "
            "and nothing is imported.",
        )
        imports.add_argument("file", metavar="FILE", help="A CSV file, or - for stdin.")
        imports.add_argument(
            "--using",
            metavar="ALIAS",
            help="The outbox mailer the entries apply to (default: the file's "
            "mailer column, or every mailer).",
        )
        imports.add_argument("--dry-run", action="store_true")

        exports = sub.add_parser("export", help="Write the list as CSV.")
        exports.add_argument(
            "file", metavar="FILE", nargs="?", default="-", help="Default: stdout."
        )
        exports.add_argument(
            "--using", metavar="ALIAS", help="Only the entries for this outbox mailer."
        )
        exports.add_argument(
            "--reason", choices=SuppressionReason.values, help="Only this reason."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options.get("using") is not None:
            options["using"] = self._outbox_mailer(options["using"])
        getattr(self, f"handle_{options['action']}")(options)

    def _outbox_mailer(self, alias: Any) -> str:
        from ...backends.outbox import EmailBackend as OutboxBackend
        from ...handler import mailers

        checked = mailer_alias("--using", str(alias))
        try:
            backend = mailers[checked]
        except Exception as exc:
            raise CommandError(f"--using: {printable(exc)}") from None
        if not isinstance(backend, OutboxBackend):
            raise CommandError(
                f"--using: {printable(checked)!r} is not an outbox mailer; the "
                "suppression list applies to outbox mailers only."
            )
        return checked

    def handle_import(self, options: dict[str, Any]) -> None:
        name = options["file"]
        source = "import of " + ("stdin" if name == "-" else Path(name).name)
        try:
            with self._open(name, "r") as stream:
                result = import_csv(
                    stream,
                    mailer=options["using"],
                    source=source[:200],
                    dry_run=options["dry_run"],
                )
        except RowError as exc:
            for line in exc.errors[:MAX_ERRORS_SHOWN]:
                self.stderr.write(printable(line))
            if exc.count > MAX_ERRORS_SHOWN:
                self.stderr.write(f"... and {exc.count - MAX_ERRORS_SHOWN} more.")
            raise CommandError(
                f"{printable(name)}: {exc.count} invalid "
                f"{_plural(exc.count, 'row', 'rows')}; nothing was imported."
            ) from None
        verb = "Would import" if options["dry_run"] else "Imported"
        self.stdout.write(
            f"{verb} {result.new} new {_plural(result.new, 'address', 'addresses')}; "
            f"{result.known} already listed, {result.duplicates} duplicate "
            f"{_plural(result.duplicates, 'row', 'rows')}."
        )

    def handle_export(self, options: dict[str, Any]) -> None:
        entries = Suppression.objects.order_by("created_at", "id")
        if options["using"]:
            entries = entries.filter(mailer=options["using"])
        if options["reason"]:
            entries = entries.filter(reason=options["reason"])
        with self._open(options["file"], "w") as stream:
            count = export_csv(stream, entries.iterator(chunk_size=2000))
        if options["file"] != "-":
            self.stdout.write(
                f"Exported {count} {_plural(count, 'entry', 'entries')} to "
                f"{printable(options['file'])}."
            )

    def _open(self, name: str, mode: str) -> IO[str]:
        if name == "-":
            stream = sys.stdin if mode == "r" else self.stdout
            return _Unclosed(stream)  # type: ignore[return-value]
        try:
            # utf-8-sig: a spreadsheet's byte order mark is not part of the header.
            encoding = "utf-8-sig" if mode == "r" else "utf-8"
            return open(name, mode, encoding=encoding, newline="")
        except OSError as exc:
            raise CommandError(
                f"{printable(name)}: {printable(exc.strerror or exc)}."
            ) from None


def _plural(count: int, one: str, many: str) -> str:
    return one if count == 1 else many


class _Unclosed:
    """stdin or the command's stdout, in a ``with`` that must not close it."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def __enter__(self) -> Any:
        return self._stream

    def __exit__(self, *exc: object) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)
