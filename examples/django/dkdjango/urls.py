"""URLs: the admin (Django's own pages), the notes list, a version page."""

from django.contrib import admin
from django.urls import path
from notes import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", views.index, name="index"),
    path("version", views.version, name="version"),
]
