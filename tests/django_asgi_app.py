"""A whole Django project in one module (settings in code, URLs here), served over ASGI under obsml."""

from __future__ import annotations

import django
from django.conf import settings

settings.configure(
    ROOT_URLCONF=__name__, ALLOWED_HOSTS=["127.0.0.1"], SECRET_KEY="tests-only", INSTALLED_APPS=[], MIDDLEWARE=[]
)
django.setup()

from django.core.asgi import get_asgi_application  # noqa: E402  (needs the settings above)
from django.http import HttpRequest, HttpResponse  # noqa: E402
from django.urls import path  # noqa: E402

from obsml import ObsmlMiddleware  # noqa: E402


def score(request: HttpRequest, row: int) -> HttpResponse:
    return HttpResponse(str(row))


urlpatterns = [path("score/<int:row>", score)]

application = ObsmlMiddleware(get_asgi_application(), service="django")
