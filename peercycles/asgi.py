"""HTTP through Django; WebSockets through Channels (the agent link at /ws/agent/, the
network's event stream at /ws/network/)."""

import gc
import os

from django.conf import settings

from peercycles.handlers import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "peercycles.settings")
django_asgi_app = get_asgi_application()
if settings.PEER_SERVE_STATIC:
    # `make run` is one process with no web server in front: serve /static/ (our CSS and the
    # npm packages) from the finders, as runserver would. A deployment serves collected files.
    from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

    django_asgi_app = ASGIStaticFilesHandler(django_asgi_app)

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402  (needs apps loaded)
from django.urls import path  # noqa: E402

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from apps.chat.consumers import ChatConsumer  # noqa: E402
from apps.marketplace.network import NetworkConsumer  # noqa: E402
from apps.marketplace.workflow_consumer import WorkflowConsumer  # noqa: E402
from apps.workers.consumers import AgentConsumer  # noqa: E402

application = ProtocolTypeRouter({
    "http": django_asgi_app,
    # Agents authenticate with their worker token in the hello frame, not with cookies,
    # so the agent route has no session or origin middleware.
    # The network stream is public and read-only. The chat is the signed-in user's: the session
    # cookie authenticates it, and only pages of this site may open it (the Origin header).
    "websocket": URLRouter([path("ws/agent/", AgentConsumer.as_asgi()),
                            path("ws/network/", NetworkConsumer.as_asgi()),
                            path("ws/chat/", AllowedHostsOriginValidator(AuthMiddlewareStack(ChatConsumer.as_asgi()))),
                            path("ws/workflow/",
                                 AllowedHostsOriginValidator(AuthMiddlewareStack(WorkflowConsumer.as_asgi())))]),
})

# What a started node holds (modules, Django's apps, every view behind the URL conf, imported now
# rather than at the first request) lives as long as the process: frozen out of the collector's
# sight, a full collection scans only what came after. Unfrozen, each one stopped the whole node
# for 95-114 ms, every few seconds under load (docs/benchmarks.md, "Collector pauses").
from django.urls import get_resolver  # noqa: E402

get_resolver().url_patterns
gc.freeze()
