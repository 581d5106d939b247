"""
The suppression list, and the "suppressed" state of messages, recipients
and attempts.
"""

import django.utils.timezone
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("django_mailkit", "0005_subject_trigram_index"),
    ]

    operations = [
        migrations.AlterField(
            model_name="attempt",
            name="outcome",
            field=models.CharField(
                choices=[
                    ("sent", "Sent"),
                    ("partial", "Partially sent"),
                    ("retry", "Temporary failure"),
                    ("failed", "Failed"),
                    ("suppressed", "Suppressed"),
                ],
                max_length=16,
                verbose_name="outcome",
            ),
        ),
        migrations.AlterField(
            model_name="outboxmessage",
            name="status",
            field=models.CharField(
                choices=[
                    ("queued", "Queued"),
                    ("sending", "Sending"),
                    ("sent", "Sent"),
                    ("partial", "Partially sent"),
                    ("failed", "Failed"),
                    ("cancelled", "Cancelled"),
                    ("suppressed", "Suppressed"),
                ],
                default="queued",
                max_length=16,
                verbose_name="status",
            ),
        ),
        migrations.AlterField(
            model_name="recipient",
            name="status",
            field=models.CharField(
                choices=[
                    ("pending", "Pending"),
                    ("deferred", "Deferred (temporary failure)"),
                    ("sent", "Accepted by the server"),
                    ("failed", "Failed"),
                    ("suppressed", "Suppressed"),
                ],
                default="pending",
                max_length=16,
                verbose_name="status",
            ),
        ),
        migrations.CreateModel(
            name="Suppression",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True,
                        primary_key=True,
                        serialize=False,
                        verbose_name="ID",
                    ),
                ),
                ("address", models.CharField(max_length=320, verbose_name="address")),
                (
                    "mailer",
                    models.CharField(
                        blank=True,
                        help_text="The outbox mailer alias; empty for every mailer.",
                        max_length=100,
                        verbose_name="mailer",
                    ),
                ),
                (
                    "reason",
                    models.CharField(
                        choices=[
                            ("bounced", "Refused by the server (permanent)"),
                            ("unsubscribed", "Unsubscribed"),
                            ("imported", "Imported"),
                        ],
                        max_length=16,
                        verbose_name="reason",
                    ),
                ),
                (
                    "smtp_code",
                    models.PositiveSmallIntegerField(
                        blank=True, null=True, verbose_name="SMTP code"
                    ),
                ),
                ("smtp_reply", models.TextField(blank=True, verbose_name="SMTP reply")),
                (
                    "source",
                    models.CharField(blank=True, max_length=200, verbose_name="source"),
                ),
                (
                    "created_at",
                    models.DateTimeField(
                        default=django.utils.timezone.now, verbose_name="created"
                    ),
                ),
            ],
            options={
                "verbose_name": "suppressed address",
                "verbose_name_plural": "suppressed addresses",
                "ordering": ["-created_at", "-id"],
                "permissions": [
                    ("unsuppress_suppression", "Can unsuppress an address")
                ],
                "indexes": [
                    models.Index(
                        fields=["-created_at", "-id"], name="mailkit_suppr_created_idx"
                    )
                ],
                "constraints": [
                    models.UniqueConstraint(
                        fields=("address", "mailer"), name="mailkit_suppression_unique"
                    )
                ],
            },
        ),
    ]
