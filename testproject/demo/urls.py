"""The demo serves the admin (visitors of / go there) and one-click unsubscribe."""

from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

urlpatterns = [
    path("admin/", admin.site.urls),
    path("mail/", include("django_mailkit.urls")),
    path("", RedirectView.as_view(url="/admin/django_mailkit/outboxmessage/")),
]
