"""Root-level credit routes (the paper's `POST /credits/buy`); the REST API is in urls_api.py."""

urlpatterns: list = []
