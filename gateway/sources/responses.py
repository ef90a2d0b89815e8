"""Relay an upstream that speaks OpenAI's Responses API (OpenAI, vLLM, another gateway), with resume.

The request asks for a background response (`background: true`, `store: true`), so the upstream keeps
generating when a connection drops: the relay then reconnects with `GET /responses/{id}?stream=true
&starting_after=<last sequence_number>` and goes on with no gap and no duplicate (the decoder drops any
sequence_number it already had). A background response does not stop when its connection closes, so
cancelling the generation here also sends `POST /responses/{id}/cancel` upstream.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import httpx

from ..codecs.responses import ResponsesDecoder
from ..models import ChatMessage, message_text
from .base import Sink
from .relay import Relay, RelayGeneration

if TYPE_CHECKING:
    from ..models import StreamRequest

__all__ = ["ResponsesRelay", "MAX_RESUMES"]

log = logging.getLogger("gateway.relay")

MAX_RESUMES = 5  # reconnects in a row with no new event between them, then the stream fails


class ResponsesRelay(Relay):
    path = "/responses"

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._cancels: set[asyncio.Task] = set()  # upstream cancels in flight (held, so none is collected)

    def body(self, request: StreamRequest) -> dict[str, Any]:
        items = []
        for m in self.messages(request):
            text = m["content"] if isinstance(m.get("content"), str) else message_text(ChatMessage.model_validate(m))
            items.append({"role": m["role"], "content": text})
        body: dict[str, Any] = {"model": self.upstream_model, "input": items, "max_output_tokens": request.max_tokens,
                                "stream": True, "background": True, "store": True}
        # As for chat completions: the simulated model's knobs travel as an extension, when set.
        sim = request.sim.model_dump(exclude_defaults=True, exclude={"drop_after"})
        if sim:
            body["sim"] = sim
            body["seed"] = request.seed
        return body

    def decoder(self, sink: Sink) -> ResumingDecoder:
        return ResumingDecoder(sink)

    def generation(self, task: asyncio.Task, decoder: ResumingDecoder) -> RelayGeneration:  # type: ignore[override]
        return ResponsesGeneration(task, decoder, self)

    async def resume(self, decoder: ResumingDecoder) -> httpx.Response | None:  # type: ignore[override]
        if decoder.response_id is None:
            return None  # cut before `response.created`: nothing to resume
        if decoder.last != decoder.resumed_at:
            decoder.resumed_at, decoder.attempts = decoder.last, 0
        if decoder.attempts >= MAX_RESUMES:
            return None
        decoder.attempts += 1
        if decoder.attempts > 1:
            await asyncio.sleep(0.05 * decoder.attempts)
        log.info("upstream %s: resuming %s after %d", self.name, decoder.response_id, decoder.last)
        request = self.http.build_request("GET", f"{self.path}/{decoder.response_id}",
                                          params={"stream": "true", "starting_after": str(decoder.last)})
        response = await self.http.send(request, stream=True)
        if response.status_code >= 400 or not response.headers.get("content-type", "").startswith("text/event-stream"):
            await response.aclose()
            raise httpx.HTTPStatusError(f"resume answered {response.status_code}", request=request, response=response)
        return response

    def cancel_upstream(self, response_id: str) -> None:
        async def cancel() -> None:
            try:
                await self.http.post(f"{self.path}/{response_id}/cancel")
            except httpx.HTTPError as exc:
                log.info("upstream %s: cancelling %s failed: %r", self.name, response_id, exc)

        task = asyncio.get_running_loop().create_task(cancel())
        self._cancels.add(task)
        task.add_done_callback(self._cancels.discard)


class ResumingDecoder(ResponsesDecoder):
    """The decoder, plus the relay's count of resumes with no progress."""

    def __init__(self, sink: Sink) -> None:
        super().__init__(sink)
        self.attempts = 0
        self.resumed_at = -1


class ResponsesGeneration(RelayGeneration):
    __slots__ = ("decoder", "relay")

    def __init__(self, task: asyncio.Task, decoder: ResumingDecoder, relay: ResponsesRelay) -> None:
        super().__init__(task)
        self.decoder = decoder
        self.relay = relay

    def cancel(self) -> None:
        super().cancel()
        if self.decoder.response_id is not None and not self.decoder.ended:
            self.relay.cancel_upstream(self.decoder.response_id)
