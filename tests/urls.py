"""URLs for the test suite: the admin, and django_mailkit's own."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("mail/", include("django_mailkit.urls")),
]
