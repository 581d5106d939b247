"""
Django's cached host name, under the name Django 6.1 exports it.

``DNS_NAME`` is Django's own object, so a test that sets or patches Django's
cached FQDN affects django_mailkit's Message-IDs and SMTP greeting too.
"""

from __future__ import annotations

from django.core.mail.utils import DNS_NAME, CachedDnsName

# Importable from here as from django.core.mail.utils (which imports it too).
from django.utils.encoding import punycode  # noqa: F401

__all__ = ["DNS_NAME", "CachedDnsName"]
