"""Django's middleware, arranged so that an OpenAI API request pays no thread hop for it.

Under ASGI Django runs every hook of an old-style middleware (`MiddlewareMixin`) through
`sync_to_async`: a thread hop per hook, thirteen per request for the site's stack, ~9% of the
node's Python time under load (docs/benchmarks.md, "Middleware without thread hops"). Two cures:

- `InlineHooks`: the hooks of the security, common and clickjacking middleware only read the
  request and set headers (no I/O), so they run on the event loop instead.
- `SiteOnly`: sessions, CSRF, authentication and messages serve the site's pages. The /v1 API
  authenticates by API key, reads no session and sets no cookie, so on its paths they are
  skipped. Its job pages (GET /v1/jobs/<id>/proof shows a signed-in user their own proof) keep them.
"""

from asgiref.sync import sync_to_async
from django.contrib.auth import middleware as auth
from django.contrib.messages import middleware as messages
from django.contrib.sessions import middleware as sessions
from django.middleware import clickjacking, common, csrf, security

SESSIONLESS_PREFIX = "/v1/"
SESSION_PATHS_UNDER_IT = ("/v1/jobs/",)


def is_sessionless(request) -> bool:
    """An OpenAI API call: no session, cookie or CSRF token means anything to it."""
    path = request.path_info
    return path.startswith(SESSIONLESS_PREFIX) and not path.startswith(SESSION_PATHS_UNDER_IT)


class InlineHooks:
    """For a MiddlewareMixin whose hooks do no I/O: under ASGI they run on the event loop."""

    async def __acall__(self, request):
        response = self.process_request(request) if hasattr(self, "process_request") else None
        response = response or await self.get_response(request)
        if hasattr(self, "process_response"):
            response = self.process_response(request, response)
        return response


class SiteOnly:
    """For a MiddlewareMixin the API does not need: skipped on sessionless paths, sync or async
    (the test client is sync, daphne async: both see the same stack)."""

    def __call__(self, request):
        if is_sessionless(request):
            return self.get_response(request)  # under ASGI a coroutine: the caller awaits it
        return super().__call__(request)


class SecurityMiddleware(InlineHooks, security.SecurityMiddleware):
    pass


class CommonMiddleware(InlineHooks, common.CommonMiddleware):
    pass


class XFrameOptionsMiddleware(InlineHooks, clickjacking.XFrameOptionsMiddleware):
    pass


class SessionMiddleware(SiteOnly, sessions.SessionMiddleware):
    pass


class AuthenticationMiddleware(SiteOnly, auth.AuthenticationMiddleware):
    pass


class MessageMiddleware(SiteOnly, messages.MessageMiddleware):
    pass


class CsrfViewMiddleware(SiteOnly, csrf.CsrfViewMiddleware):
    """process_view is called apart from the chain (Django adapts it to the handler's mode):
    under ASGI it is a coroutine here, which a sessionless path answers without a thread hop (its
    views are csrf_exempt anyway) and a page's runs in a thread as before."""

    def __init__(self, get_response):
        super().__init__(get_response)
        if self.async_mode:
            self.process_view = self._process_view_async

    async def _process_view_async(self, request, callback, callback_args, callback_kwargs):
        if is_sessionless(request):
            return None
        return await sync_to_async(super().process_view, thread_sensitive=True)(
            request, callback, callback_args, callback_kwargs)
