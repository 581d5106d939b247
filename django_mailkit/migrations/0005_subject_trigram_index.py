"""
A trigram index on the subject, for the admin's search on PostgreSQL.

The search looks for each word in the subject and in the recipients'
addresses. With both trigram indexes, PostgreSQL finds the few matching
messages from the indexes and sorts just those (a rare word among a million
messages: a few milliseconds); with only the address index, it walked the
newest messages testing every subject (about a second). Created as 0004's
index is: only where ``pg_trgm`` is, or can be, installed.
"""

from typing import Any

from django.db import DatabaseError, migrations, transaction

INDEX = "mailkit_subject_trgm"


def create_index(apps: Any, schema_editor: Any) -> None:
    connection = schema_editor.connection
    if connection.vendor != "postgresql":
        return
    quote = schema_editor.quote_name
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm'")
        if cursor.fetchone() is None:
            cursor.execute(
                "SELECT 1 FROM pg_available_extensions WHERE name = 'pg_trgm'"
            )
            if cursor.fetchone() is None:
                return
            try:
                with transaction.atomic(using=connection.alias):  # a savepoint
                    cursor.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
            except DatabaseError:
                return
        table = apps.get_model("django_mailkit", "outboxmessage")._meta.db_table
        cursor.execute(
            f"CREATE INDEX IF NOT EXISTS {quote(INDEX)} ON {quote(table)} "
            f"USING gin (UPPER({quote('subject')}) gin_trgm_ops)"
        )


def drop_index(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"DROP INDEX IF EXISTS {schema_editor.quote_name(INDEX)}")


class Migration(migrations.Migration):
    dependencies = [
        ("django_mailkit", "0004_message_size_and_search_indexes"),
    ]

    operations = [migrations.RunPython(create_index, drop_index)]
