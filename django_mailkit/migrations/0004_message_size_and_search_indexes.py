"""
A message's size, stored when it is queued; a trigram index for the admin's
search by part of an address, on PostgreSQL.

The admin's search matches part of a recipient's address with
``icontains``, which PostgreSQL runs as ``UPPER(address) LIKE
UPPER('%word%')``. A GIN trigram index on ``UPPER(address)`` answers that
without scanning the table (0005 adds the subject's). It needs
the ``pg_trgm`` extension: created here when the server has it and the
database user may create it (it is a trusted extension since PostgreSQL 13);
otherwise the migration goes on without the index, and search scans. Other
databases get no index: they scan.
"""

from typing import Any

from django.db import DatabaseError, migrations, models, transaction

#: (index name, model name, column)
TRIGRAM_INDEXES = [
    ("mailkit_rcpt_addr_trgm", "recipient", "address"),
]


def create_trigram_indexes(apps: Any, schema_editor: Any) -> None:
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
                return  # not installed on this server (postgresql-contrib)
            try:
                with transaction.atomic(using=connection.alias):  # a savepoint
                    cursor.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
            except DatabaseError:
                return  # not allowed: search scans instead
        for name, model_name, column in TRIGRAM_INDEXES:
            table = apps.get_model("django_mailkit", model_name)._meta.db_table
            cursor.execute(
                f"CREATE INDEX IF NOT EXISTS {quote(name)} ON {quote(table)} "
                f"USING gin (UPPER({quote(column)}) gin_trgm_ops)"
            )


def drop_trigram_indexes(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    for name, _model_name, _column in TRIGRAM_INDEXES:
        schema_editor.execute(f"DROP INDEX IF EXISTS {schema_editor.quote_name(name)}")


class Migration(migrations.Migration):
    dependencies = [
        ("django_mailkit", "0003_resend_link_and_claim_token"),
    ]

    operations = [
        migrations.AddField(
            model_name="outboxmessage",
            name="size",
            field=models.PositiveBigIntegerField(
                blank=True, null=True, verbose_name="size"
            ),
        ),
        migrations.RunPython(create_trigram_indexes, drop_trigram_indexes),
    ]
