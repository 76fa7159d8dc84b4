"""Websocket consumers: authenticate, join a group, forward analysis and annotation events as JSON.

While the channel layer (Redis) cannot be reached, a websocket is refused, or closed, with
CLOSE_TRY_AGAIN and one log line, never a server error: the page reconnects by itself and
re-reads the server once it is back.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from redis.exceptions import RedisError

from web.access import Capability, can
from web.clinical.events import WORKLIST_GROUP, batch_group, study_group, user_group
from web.clinical.models import Batch, Study

CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404
CLOSE_TRY_AGAIN = 4503  # the channel layer is unavailable
FRAME_MAX_CHARS = 1024  # a page sends only pings

log = logging.getLogger(__name__)


class UnknownPathConsumer(AsyncJsonWebsocketConsumer):
    """Any other websocket path: refused cleanly at the handshake (not a server error)."""

    async def connect(self) -> None:
        await self.close(code=CLOSE_NOT_FOUND)


class LiveConsumer(AsyncJsonWebsocketConsumer):
    """/ws/worklist/, /ws/studies/<id>/ and /ws/batches/<id>/. Anonymous connections, and
    accounts that may not see studies (no role), are refused at the handshake."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        except (RedisError, OSError) as exc:
            # Joining a group, or the layer's receive loop, could not reach Redis.
            log.warning("Websocket %s closed: channel layer unavailable (%s)", scope.get("path"), exc)
            with contextlib.suppress(Exception):  # the browser may have gone already
                await send({"type": "websocket.close", "code": CLOSE_TRY_AGAIN})

    async def connect(self) -> None:
        self.joined: list[str] = []
        user = self.scope.get("user")
        if user is None or not user.is_authenticated or not user.is_active:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        if not await _may_view_studies(user):
            await self.close(code=CLOSE_FORBIDDEN)
            return
        kwargs = self.scope["url_route"]["kwargs"]
        study_id = kwargs.get("study_id")
        if "batch_id" in kwargs:
            if not await _batch_visible(kwargs["batch_id"], user):
                await self.close(code=CLOSE_NOT_FOUND)
                return
            group = batch_group(kwargs["batch_id"])
        elif study_id is None:
            group = WORKLIST_GROUP
        else:
            if not await _study_exists(study_id):
                await self.close(code=CLOSE_NOT_FOUND)
                return
            group = study_group(study_id)
        for joined in (group, user_group(user.pk)):
            await self.channel_layer.group_add(joined, self.channel_name)
            self.joined.append(joined)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        try:
            for group in getattr(self, "joined", []):
                await self.channel_layer.group_discard(group, self.channel_name)
        except (RedisError, OSError):
            pass  # Redis is down: its group entries expire by themselves (the layer's expiry)

    async def receive(
        self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs: Any
    ) -> None:
        """A frame too large, or not JSON, is ignored: pages only ping (a deeply nested frame
        must not reach the decoder, which fails on it with a RecursionError)."""
        if text_data is None or len(text_data) > FRAME_MAX_CHARS:
            return
        try:
            await super().receive(text_data=text_data, **kwargs)
        except (ValueError, RecursionError):
            return

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if isinstance(content, dict) and content.get("type") == "ping":
            await self.send_json({"type": "pong"})

    async def analysis_event(self, message: dict[str, Any]) -> None:
        await self.send_json({"type": "analysis", "event": message["event"], "analysis": message["analysis"]})

    async def study_event(self, message: dict[str, Any]) -> None:
        await self.send_json({"type": "study", "event": message["event"], "study": message["study"]})

    async def analysis_events(self, message: dict[str, Any]) -> None:
        """A burst sent as one channel message: the page still gets one frame per event."""
        handlers = {
            "annotation.event": self.annotation_event,
            "study.event": self.study_event,
            "batch.progress": self.batch_progress,
        }
        for event in message["events"]:
            await handlers.get(event.get("type", ""), self.analysis_event)(event)

    async def annotation_event(self, message: dict[str, Any]) -> None:
        await self.send_json(
            {"type": "annotation", "event": message["event"], "annotation": message["annotation"]}
        )

    async def batch_progress(self, message: dict[str, Any]) -> None:
        await self.send_json({"type": "batch", "progress": message["progress"]})

    async def access_ended(self, message: dict[str, Any]) -> None:
        """The account's password changed, or it was deactivated or lost a role: log in again."""
        await self.close(code=CLOSE_UNAUTHENTICATED)


@database_sync_to_async
def _study_exists(study_id: int) -> bool:
    return Study.objects.filter(pk=study_id).exists()


@database_sync_to_async
def _may_view_studies(user: Any) -> bool:
    return can(user, Capability.VIEW_STUDIES)


@database_sync_to_async
def _batch_visible(batch_id: int, user: object) -> bool:
    return can(user, Capability.VIEW_STUDIES) and Batch.objects.filter(pk=batch_id).exists()
