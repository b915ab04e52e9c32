from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from notes.models import Note


def index(request: HttpRequest) -> HttpResponse:
    return render(request, "notes/index.html", {"notes": Note.objects.order_by("-id")[:50],
                                                "version": settings.APP_VERSION})


def version(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"version": settings.APP_VERSION})
