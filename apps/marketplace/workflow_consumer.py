"""The network workflow's socket (/ws/workflow/): the signed-in page says "run", the workflow
(workflow.py) reports each step; for the confidential step it asks the page to attest an enclave
and seal a prompt, since only the page may see that prompt in the clear.

Page -> node: {"type": "run"} | {"type": "sealed", "peer_sealed": {...}} | {"type": "sealed", "error"}
Node -> page: {"step", "state", ...} per step | {"type": "seal", "model", "prompt"} | {"type": "error", ...}
"""

import asyncio
import logging

from channels.generic.websocket import AsyncJsonWebsocketConsumer

from peercycles.handlers import ThreadPerConnection

from .workflow import Workflow, wait_or_none

logger = logging.getLogger(__name__)
CLOSE_NOT_SIGNED_IN = 4401


class WorkflowConsumer(ThreadPerConnection, AsyncJsonWebsocketConsumer):
    running: asyncio.Task | None = None
    sealed: asyncio.Future | None = None

    async def connect(self):
        if not self.scope["user"].is_authenticated:
            await self.close(code=CLOSE_NOT_SIGNED_IN)
            return
        await self.accept()

    async def disconnect(self, code):
        if self.running is not None:
            self.running.cancel()

    async def receive_json(self, content, **kwargs):
        kind = content.get("type") if isinstance(content, dict) else None
        if kind == "run":
            if self.running is not None and not self.running.done():
                await self.send_json({"type": "error", "code": "busy", "message": "The workflow is running."})
                return
            workflow = Workflow(user=self.scope["user"], emit=self.send_json, ask_sealed=self._ask_sealed)
            self.running = asyncio.create_task(self._run(workflow))
        elif kind == "sealed" and self.sealed is not None and not self.sealed.done():
            peer_sealed = content.get("peer_sealed")
            self.sealed.set_result(peer_sealed if isinstance(peer_sealed, dict) else None)
        else:
            await self.send_json({"type": "error", "code": "invalid_message", "message": "Send {\"type\": \"run\"}."})

    async def _run(self, workflow: Workflow):
        try:
            await workflow.run()
        except Exception:  # a bug must still end the page's wait with a word
            logger.exception("the network workflow failed")
            await self.send_json({"step": "workflow", "state": "failed", "message": "The workflow failed on the node."})

    async def _ask_sealed(self, model: str, prompt: str):
        self.sealed = asyncio.get_running_loop().create_future()
        await self.send_json({"type": "seal", "model": model, "prompt": prompt})
        return await wait_or_none(self.sealed)
