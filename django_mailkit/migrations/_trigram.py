"""
Trigram indexes for the admin's substring search, on PostgreSQL only.

Shared by the migrations that add them (0004, 0005). An index is created
only where the ``pg_trgm`` extension is installed or may be created by the
database user (a trusted extension since PostgreSQL 13); otherwise the
migration goes on without it, and the search scans. Other databases get no
index. The loader skips this module: its name starts with an underscore.
"""

from typing import Any

from django.db import DatabaseError, migrations, transaction


def _has_pg_trgm(connection: Any, cursor: Any) -> bool:
    cursor.execute("SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm'")
    if cursor.fetchone() is not None:
        return True
    cursor.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'pg_trgm'")
    if cursor.fetchone() is None:
        return False  # not installed on this server (postgresql-contrib)
    try:
        with transaction.atomic(using=connection.alias):  # a savepoint
            cursor.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    except DatabaseError:
        return False  # not allowed: search scans instead
    return True


def trigram_index(name: str, model_name: str, column: str) -> migrations.RunPython:
    """
    Return the operation that adds a GIN trigram index on ``UPPER(column)``
    (what ``icontains`` compares on PostgreSQL), and drops it when reversed.
    """

    def create(apps: Any, schema_editor: Any) -> None:
        connection = schema_editor.connection
        if connection.vendor != "postgresql":
            return
        quote = schema_editor.quote_name
        with connection.cursor() as cursor:
            if not _has_pg_trgm(connection, cursor):
                return
            table = apps.get_model("django_mailkit", model_name)._meta.db_table
            cursor.execute(
                f"CREATE INDEX IF NOT EXISTS {quote(name)} ON {quote(table)} "
                f"USING gin (UPPER({quote(column)}) gin_trgm_ops)"
            )

    def drop(apps: Any, schema_editor: Any) -> None:
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(
                f"DROP INDEX IF EXISTS {schema_editor.quote_name(name)}"
            )

    return migrations.RunPython(create, drop)
