"""
A trigram index on the subject, for the admin's search on PostgreSQL.

The search looks for each word in the subject and in the recipients'
addresses. With both trigram indexes, PostgreSQL finds the few matching
messages from the indexes and sorts just those (a rare word among a million
messages: a few milliseconds); with only the address index, it walked the
newest messages testing every subject (about a second). Created as 0004's
index is: only where ``pg_trgm`` is, or can be, installed.
"""

from django.db import migrations

from ._trigram import trigram_index


class Migration(migrations.Migration):
    dependencies = [
        ("django_mailkit", "0004_message_size_and_search_indexes"),
    ]

    operations = [trigram_index("mailkit_subject_trgm", "outboxmessage", "subject")]
