"""
django_mailkit's public URLs: one-click unsubscribe.

Include them in your project's urls::

    path("mail/", include("django_mailkit.urls")),
"""

from django.urls import path

from .unsubscribe import unsubscribe_view

app_name = "django_mailkit"

urlpatterns = [
    path("unsubscribe/<str:token>/", unsubscribe_view, name="unsubscribe"),
]
