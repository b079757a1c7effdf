"""What a replica says to each request: the per-request boundary around the handler.

``Answerer`` validates a request's frames (``reqrep.protocol``), hands a well-formed one to
the handler (``reqrep.handlers``) and turns whatever the handler does into exactly one reply:
its body (``Server response``), ``Server error`` with the exception's type and message when it
raises (the traceback goes to the log), ``Server timeout`` when it runs past the handler
timeout, ``Server error`` when a stop cancels it. It logs and counts each outcome. It does no
I/O: the serving loops (``reqrep.server``, ``reqrep.readers``) send what it returns.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Awaitable, Callable
from time import monotonic

from reqrep import handlers, protocol
from reqrep.config import ServerConfig
from reqrep.handlers import Prepared
from reqrep.metrics import ServerMetrics
from reqrep.protocol import SERVER_RESPONSE, Request

logger = logging.getLogger(__name__)

Answer = Callable[[list[bytes], bytes], list[bytes]]
AnswerAsync = Callable[[list[bytes], bytes], Awaitable[list[bytes]]]


class Answerer:
    """The per-request boundary: every request gets exactly one reply.

    What a replica says to each request, the error log line, the counts: a
    malformed one is answered ``Invalid message`` (logged at ERROR, counted by
    fault kind); a well-formed one goes to the handler, and whatever it does (a
    body, an exception, too long a run, being cancelled by a stop) becomes one reply.
    """

    def __init__(
        self, config: ServerConfig, handler: Prepared, metrics: ServerMetrics | None = None
    ) -> None:
        self._replica = config.name
        self._name = config.name.encode()
        self._max_message_bytes = config.max_message_bytes
        self._timeout_s = config.handler_timeout_ms / 1000
        self._timeout_ms = config.handler_timeout_ms
        self._handler = handler
        self._call_sync = handler.handler
        self._call_async: Callable[[Request], Awaitable[object]] | None = (
            handlers.async_call(handler) if handler.asynchronous else None
        )
        self._debug = logger.isEnabledFor(logging.DEBUG)
        self.metrics = metrics
        self.served = 0

    @property
    def inline(self) -> bool:
        """A synchronous handler called in the event loop (no thread pool)."""
        return self._call_async is None

    def use_executor(self, executor: concurrent.futures.Executor | None) -> None:
        """Run the synchronous handler in ``executor`` (a thread pool), awaited as if async."""
        if executor is None:
            return
        call = handlers.sync_call(self._handler)

        def in_pool(request: Request) -> Awaitable[object]:
            return asyncio.get_running_loop().run_in_executor(executor, call, request)

        self._call_async = in_pool

    def inline_answer(self) -> Answer:
        """The synchronous answer function for this handler: the default's fast path or not."""
        if self._handler.is_default:
            return self.answer_default
        return self.answer_sync

    def answer_async_or_inline(self) -> AnswerAsync:
        """An awaitable answer function whatever the handler (REP mode: one at a time)."""
        if self._call_async is not None:
            return self.answer_async
        answer = self.inline_answer()

        async def answer_now(request: list[bytes], peer: bytes) -> list[bytes]:
            return answer(request, peer)

        return answer_now

    def routed(self, answer: Answer) -> Callable[[list[bytes]], list[bytes]]:
        """``answer`` over ROUTER messages: the routed reply out, envelope echoed in front."""

        def answer_routed(frames: list[bytes]) -> list[bytes]:
            envelope, request = protocol.split_envelope(frames)
            return envelope + answer(request, envelope[0])

        return answer_routed

    # -- the three ways to answer ------------------------------------------------

    def answer_default(self, frames: list[bytes], peer: bytes) -> list[bytes]:
        """The default handler's reply (an empty body), without building a ``Request``."""
        return self._refusal(frames, peer) or protocol.ok_reply(self._name)

    def answer_sync(self, frames: list[bytes], peer: bytes) -> list[bytes]:
        """A synchronous handler's reply, the handler called here and now.

        ``_check`` written out here (the request made inline): the hot path of a quick handler.
        """
        invalid = self._refusal(frames, peer)
        if invalid is not None:
            return invalid
        request = Request(
            frames[0].decode(), frames[1], self._replica, peer.hex(), monotonic() + self._timeout_s
        )
        try:
            body = self._call_sync(request)
            if type(body) is not bytes:
                body = handlers.as_body(body)
        except Exception as error:
            return self._failed(error, request)
        if monotonic() > request.deadline:
            return self._timed_out(request)
        return [SERVER_RESPONSE, self._name, body]

    async def answer_async(self, frames: list[bytes], peer: bytes) -> list[bytes]:
        """An async (or thread-pooled) handler's reply, awaited within the handler timeout."""
        checked = self._check(frames, peer)
        if not isinstance(checked, Request):
            return checked
        call = self._call_async
        if call is None:  # pragma: no cover - only async paths get here
            raise RuntimeError("no awaitable handler")
        try:
            async with asyncio.timeout(self._timeout_s) as timeout:
                body = handlers.as_body(await call(checked))
        except TimeoutError as error:
            if timeout.expired():
                return self._timed_out(checked)
            return self._failed(error, checked)
        except asyncio.CancelledError as error:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                return self._cancelled(checked)
            return self._failed(error, checked)  # the handler's own, not a stop
        except Exception as error:
            return self._failed(error, checked)
        return [protocol.SERVER_RESPONSE, self._name, body]

    # -- what each outcome says, logs and counts ------------------------------------

    def _refusal(self, frames: list[bytes], peer: bytes) -> list[bytes] | None:
        """Count a request in; the ``Invalid message`` reply if it is malformed, else None."""
        self.served += 1
        if self._debug:
            logger.debug("Request received from peer %s", _peer_label(peer))
        fault = protocol.request_fault(frames, self._max_message_bytes)
        if fault is None:
            return None
        self._log_invalid(fault, peer)
        return protocol.invalid_reply(self._name, fault.reason)

    def _check(self, frames: list[bytes], peer: bytes) -> Request | list[bytes]:
        """The request for the handler, or the ``Invalid message`` reply if it is malformed."""
        invalid = self._refusal(frames, peer)
        if invalid is not None:
            return invalid
        return Request(
            bytes(frames[0]).decode("utf-8"),
            bytes(frames[1]),
            self._replica,
            peer.hex(),
            monotonic() + self._timeout_s,
        )

    def _log_invalid(self, fault: protocol.Fault, peer: bytes) -> None:
        logger.error("Invalid message from peer %s: %s", _peer_label(peer), fault.reason)
        if self.metrics is not None:
            self.metrics.count_invalid(fault.kind)

    def _failed(self, error: BaseException, request: Request) -> list[bytes]:
        logger.error(
            "Handler %s raised on a request from %s (peer %s)",
            *(self._handler.name, request.address, request.peer or "-"),
            exc_info=error,
        )
        if self.metrics is not None:
            self.metrics.count_error(type(error).__name__)
        return protocol.error_reply(self._name, error)

    def _timed_out(self, request: Request) -> list[bytes]:
        logger.error(
            "Handler %s did not finish within %g ms on a request from %s (peer %s)",
            *(self._handler.name, self._timeout_ms, request.address, request.peer or "-"),
        )
        if self.metrics is not None:
            self.metrics.count_timeout()
        return protocol.timeout_reply(self._name, self._timeout_ms)

    def _cancelled(self, request: Request) -> list[bytes]:
        logger.warning(
            "Stopping: the handler's run on a request from %s (peer %s) was cancelled",
            request.address,
            request.peer or "-",
        )
        error = asyncio.CancelledError("the replica stopped before the handler finished")
        if self.metrics is not None:
            self.metrics.count_error(type(error).__name__)
        return protocol.error_reply(self._name, error)


def _peer_label(peer: bytes) -> str:
    return peer.hex() if peer else "-"
