"""The network's live event stream: `/ws/network/`, public and read-only, one JSON object per
event ({"type": ..., "at": ISO time, ...}). Verification publishes its verdicts, slashes and
challenges here (apps/verification); a beat task publishes "network.stats", the network's figures,
every few seconds (network_stats.py); what the web pages show live subscribes here.

Publishing is best effort: an event is sent after its transaction commits, and a failing
channel layer loses the event, never the change it reports (that is in the database).
"""

import logging

from asgiref.sync import async_to_sync
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.layers import get_channel_layer
from django.db import transaction
from django.utils import timezone

from .relay import LAYER_ERRORS

logger = logging.getLogger(__name__)
NETWORK_GROUP = "network.events"


def network_event_publish(kind: str, **data) -> None:
    """Tell every watcher of the network about `kind`, once the current transaction commits."""
    event = {"type": kind, "at": timezone.now().isoformat(), **data}

    def send() -> None:
        try:
            async_to_sync(get_channel_layer().group_send)(NETWORK_GROUP, {"type": "network.event", "event": event})
        except LAYER_ERRORS as exc:
            logger.warning("network event %s not published: %s", kind, exc)

    transaction.on_commit(send)


class NetworkConsumer(AsyncJsonWebsocketConsumer):
    """A watcher of the network: receives every event published from now on."""

    async def connect(self):
        await self.channel_layer.group_add(NETWORK_GROUP, self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        await self.channel_layer.group_discard(NETWORK_GROUP, self.channel_name)

    async def receive_json(self, content, **kwargs):
        pass  # read-only: what a watcher sends is ignored

    async def network_event(self, message):
        await self.send_json(message["event"])
