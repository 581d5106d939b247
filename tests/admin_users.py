"""Logged-in admin clients for the admin tests."""

from django.contrib.auth.models import Permission, User
from django.test import Client


def staff(*codenames, username="staff"):
    """A logged-in client for a staff user with just these permissions."""
    # No password: hashing one costs more than the rest of a test.
    user = User.objects.create_user(username, is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(
            content_type__app_label="django_mailkit", codename__in=codenames
        )
    )
    assert user.user_permissions.count() == len(codenames)
    client = Client()
    client.force_login(user)
    return client
