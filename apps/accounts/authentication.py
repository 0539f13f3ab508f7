from rest_framework import authentication, exceptions

from .selectors import api_key_authenticate, bearer_token


class ApiKeyAuthentication(authentication.BaseAuthentication):
    """DRF authentication with the same `Authorization: Bearer pc_...` keys as /v1."""

    def authenticate(self, request):
        token = bearer_token(request.headers.get("Authorization", ""))
        if not token:
            return None
        user = api_key_authenticate(raw_key=token)
        if user is None:
            raise exceptions.AuthenticationFailed("Invalid or revoked API key.")
        return user, None

    def authenticate_header(self, request):
        return "Bearer"
