"""The asyncio ZeroMQ server: the REP side of the request/reply pattern.

By default it serves REQ clients from a ROUTER socket, so many requests are in
flight at once (bounded by ``--max-inflight``); ``--socket rep`` is the
textbook REP socket that handles one request at a time. Both use the same
handler and the pure protocol in ``protocol.py``.

    python3 server.py --bind tcp://*:5555
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import zmq
import zmq.asyncio
from zmq.auth.asyncio import AsyncioAuthenticator

import cli
import keys
import protocol

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    bind: Sequence[str] = ("tcp://*:5555",)
    name: str = field(default_factory=socket.gethostname)
    socket_type: str = "router"
    max_inflight: int = 1000
    work_ms: float = 0.0
    max_message_bytes: int = protocol.DEFAULT_MAX_MESSAGE_BYTES
    grace_s: float = 5.0
    heartbeat_ms: int = 10_000
    # CurveZMQ: the server's .key_secret file, and the directory of client
    # public keys allowed in (None: any client key, encrypted all the same).
    curve_secret_key: str | None = None
    curve_authorized_keys: str | None = None


class Server:
    """One replica: binds its socket, answers requests until told to stop."""

    def __init__(self, config: ServerConfig, context: zmq.asyncio.Context) -> None:
        if config.socket_type not in ("router", "rep"):
            raise ValueError(f"socket_type must be 'router' or 'rep', not {config.socket_type!r}")
        self.config = config
        self._context = context
        self._name = config.name.encode("utf-8")
        self._work_s = config.work_ms / 1000
        self._socket: zmq.asyncio.Socket | None = None
        self._receiving: asyncio.Future[list[bytes]] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._inflight = asyncio.Semaphore(config.max_inflight)
        self.endpoints: list[str] = []
        self.requests_served = 0
        self._debug = logger.isEnabledFor(logging.DEBUG)
        self._authenticator: AsyncioAuthenticator | None = None

    def bind(self) -> list[str]:
        """Create and bind the socket; return the endpoints actually bound."""
        kind = zmq.ROUTER if self.config.socket_type == "router" else zmq.REP
        sock = self._context.socket(kind)
        try:
            sock.setsockopt(zmq.MAXMSGSIZE, self.config.max_message_bytes)
            sock.setsockopt(zmq.LINGER, 0)
            if self.config.heartbeat_ms > 0:
                sock.setsockopt(zmq.HEARTBEAT_IVL, self.config.heartbeat_ms)
                sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3 * self.config.heartbeat_ms)
            self._secure(sock)
            for endpoint in self.config.bind:
                sock.bind(endpoint)
                self.endpoints.append(sock.getsockopt_string(zmq.LAST_ENDPOINT))
        except BaseException:
            sock.close(linger=0)
            self._stop_authenticator()
            raise
        self._socket = sock
        return list(self.endpoints)

    def _secure(self, sock: zmq.asyncio.Socket) -> None:
        """Make ``sock`` a CURVE server, with ZAP checking client keys, if configured.

        The authenticator is started before the socket binds, so no handshake
        can happen without it; it runs in this event loop.
        """
        config = self.config
        if config.curve_secret_key is None:
            if config.curve_authorized_keys is not None:
                raise keys.CurveKeyError("--curve-authorized-keys needs --curve-secret-key")
            return
        pair = keys.load_key_pair(config.curve_secret_key)
        if config.curve_authorized_keys is not None:
            count = keys.check_authorized_keys(config.curve_authorized_keys)
            asyncio.get_running_loop()  # raises outside the loop that will answer ZAP
            authenticator = AsyncioAuthenticator(self._context)
            authenticator.start()
            self._authenticator = authenticator
            # No allow(): every IP may try (behind nginx they all look alike); the key decides.
            authenticator.configure_curve(domain="*", location=config.curve_authorized_keys)
            logger.info(
                "CURVE on: %d authorized client key(s) in %s", count, config.curve_authorized_keys
            )
        else:
            logger.warning("CURVE on without --curve-authorized-keys: any client key is accepted")
        sock.curve_secretkey = pair.secret
        sock.curve_publickey = pair.public
        sock.curve_server = True

    def _stop_authenticator(self) -> None:
        if self._authenticator is not None:
            self._authenticator.stop()
            self._authenticator = None

    async def serve(self, stop: asyncio.Event) -> None:
        """Answer requests until ``stop`` is set, then drain and close."""
        if self._socket is None:
            self.bind()
        sock = self._socket
        if sock is None:  # pragma: no cover - bind() sets it or raises
            raise RuntimeError("socket not bound")
        logger.info(
            "Server %s serving on %s (socket=%s, max_inflight=%d, work_ms=%g)",
            self.config.name,
            ", ".join(self.endpoints),
            self.config.socket_type,
            self.config.max_inflight,
            self.config.work_ms,
        )
        watcher = asyncio.create_task(self._cancel_receive_on(stop))
        try:
            await self._receive_loop(sock, stop)
        finally:
            watcher.cancel()
            await self._drain(sock)
            self._stop_authenticator()

    async def _cancel_receive_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        if self._receiving is not None:
            # Cancel only the wait for the next request: a request already
            # received (even one whose future just completed) is answered.
            self._receiving.cancel()

    async def _receive(self, sock: zmq.asyncio.Socket) -> list[bytes] | None:
        """The next request's frames, or None once the receive was cancelled by stop."""
        self._receiving = asyncio.ensure_future(sock.recv_multipart())
        try:
            return await self._receiving
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            return None
        finally:
            self._receiving = None

    async def _receive_loop(self, sock: zmq.asyncio.Socket, stop: asyncio.Event) -> None:
        rep = self.config.socket_type == "rep"
        # A synchronous handle on the same socket: requests already queued are
        # answered without a future, a task or an event-loop turn each.
        queued: zmq.Socket[bytes] = zmq.Socket.shadow(sock.underlying)
        while not stop.is_set():
            if rep:
                frames = await self._receive(sock)
                if frames is None:
                    return
                if self._debug:
                    logger.debug("Request received: %d frame(s)", len(frames))
                await sock.send_multipart(await self._answer(frames, peer="-"))
                continue
            if self._work_s <= 0 and self._answer_queued(queued):
                await asyncio.sleep(0)  # busy for a while: signals, stop and ZAP get a turn
                continue
            await self._inflight.acquire()
            frames = None if stop.is_set() else await self._receive(sock)
            if frames is None:
                self._inflight.release()
                return
            envelope, request = protocol.split_envelope(frames)
            if self._debug:
                logger.debug("Request received from peer %s", envelope[0].hex())
            if self._work_s <= 0:
                # No work to wait for: answer inline, no task per request.
                # A ROUTER socket drops rather than blocks, so the send is sync.
                self._inflight.release()
                send_now(queued, envelope + self._reply(request, envelope[0])[0])
                continue
            task = asyncio.create_task(self._answer_in_task(sock, envelope, request))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _answer_in_task(
        self, sock: zmq.asyncio.Socket, envelope: list[bytes], request: list[bytes]
    ) -> None:
        try:
            reply = await self._answer(request, envelope[0])
            await sock.send_multipart(envelope + reply)
        finally:
            self._inflight.release()

    def _answer_queued(self, queued: zmq.Socket[bytes]) -> bool:
        """Answer requests synchronously while they keep coming (router mode, no work).

        Under load this works like a synchronous server: after each reply it
        takes the next queued request, or waits up to BUSY_WAIT_MS for one in
        zmq_poll, instead of a future and an event-loop wake-up per burst (the
        profile's biggest cost after the frame I/O). That wait blocks the event
        loop, which has nothing else to do in this mode but signals, stop and
        CURVE's ZAP handler; they get a turn at least every BUSY_TURN_S.

        Returns False once no request came for BUSY_WAIT_MS (then the next one
        is awaited in the event loop), True when the event loop's turn is due.
        """
        clock = asyncio.get_running_loop().time
        turn_at = clock() + BUSY_TURN_S
        waiting = [(queued, zmq.POLLIN)]
        while True:
            try:
                frames = recv_now(queued)
            except zmq.Again:
                if not zmq.zmq_poll(waiting, BUSY_WAIT_MS):
                    return False
                continue
            envelope, request = protocol.split_envelope(frames)
            if self._debug:
                logger.debug("Request received from peer %s", envelope[0].hex())
            send_now(queued, envelope + self._reply(request, envelope[0])[0])
            if clock() >= turn_at:
                return True

    async def _answer(self, request: list[bytes], peer: bytes | str) -> list[bytes]:
        """The reply to one request, after the work if it is valid."""
        reply, valid = self._reply(request, peer)
        if valid and self._work_s > 0:
            await asyncio.sleep(self._work_s)
        return reply

    def _reply(self, request: list[bytes], peer: bytes | str) -> tuple[list[bytes], bool]:
        """The reply to one request and whether it was valid; the per-request error boundary."""
        self.requests_served += 1
        try:
            reply, reason = protocol.respond(request, self._name, self.config.max_message_bytes)
        except Exception:
            logger.error("Failed to handle a request from %s", _peer_label(peer), exc_info=True)
            return protocol.invalid_reply(self._name, "internal server error"), False
        if reason is not None:
            logger.error("Invalid message from peer %s: %s", _peer_label(peer), reason)
            return reply, False
        return reply, True

    async def _drain(self, sock: zmq.asyncio.Socket) -> None:
        """Finish the requests in flight, then close the socket."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.grace_s
        pending = set(self._tasks)
        if pending:
            logger.info("Stopping: finishing %d request(s) in flight", len(pending))
            _, pending = await asyncio.wait(pending, timeout=self.config.grace_s)
            for task in pending:
                task.cancel()
            if pending:
                logger.warning("Grace period over: %d request(s) left unanswered", len(pending))
        # Give queued replies the rest of the grace period to leave.
        linger_ms = max(0, int((deadline - loop.time()) * 1000))
        sock.close(linger=linger_ms)
        self._socket = None
        logger.info("Server %s stopped after %d request(s)", self.config.name, self.requests_served)


# Router mode without work, under load: how long to wait for the next request
# before waiting in the event loop again, and how often the event loop gets a
# turn while requests keep coming.
BUSY_WAIT_MS = 1
BUSY_TURN_S = 0.005
# The hot path's frame I/O, measured with py-spy: pyzmq's send_multipart and
# recv_multipart combine enum flags and look up RCVMORE by enum per frame, and
# zmq.Socket.send wraps the backend's send in checks for options never used
# here (routing_id, group); the backend's methods with plain ints cost half.
_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE = int(zmq.SNDMORE)
_send_frame = zmq.backend.Socket.send
_recv_frame = zmq.backend.Socket.recv


def recv_now(sock: zmq.Socket[bytes]) -> list[bytes]:
    """One whole message if one is queued; raises zmq.Again if none is."""
    frame = _recv_frame(sock, _NOBLOCK, False)
    frames = [frame.bytes]
    while frame.more:
        frame = _recv_frame(sock, _NOBLOCK, False)
        frames.append(frame.bytes)
    return frames


def send_now(sock: zmq.Socket[bytes], frames: list[bytes]) -> None:
    """Send a multipart message of bytes (on a ROUTER socket this never blocks)."""
    for frame in frames[:-1]:
        _send_frame(sock, frame, _SNDMORE)
    _send_frame(sock, frames[-1])


def _peer_label(peer: bytes | str) -> str:
    return peer.hex() if isinstance(peer, bytes) else peer


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Asynchronous ZeroMQ request/reply server (the REP side).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--bind",
        action="append",
        help="endpoint to bind, repeatable (env SERVER_BIND, comma-separated; "
        "default tcp://*:5555)",
    )
    parser.add_argument(
        "--name",
        default=cli.env("SERVER_NAME", socket.gethostname()),
        help="replica name sent back in every reply (env SERVER_NAME; default the hostname)",
    )
    parser.add_argument(
        "--socket",
        choices=("router", "rep"),
        default=cli.env("SERVER_SOCKET", "router"),
        help="router: many requests in flight; rep: one at a time (env SERVER_SOCKET)",
    )
    parser.add_argument(
        "--max-inflight",
        type=cli.int_at_least(1),
        default=cli.env("SERVER_MAX_INFLIGHT", "1000"),
        help="requests handled at once in router mode (env SERVER_MAX_INFLIGHT)",
    )
    parser.add_argument(
        "--work-ms",
        type=cli.float_at_least(0),
        default=cli.env("SERVER_WORK_MS", "0"),
        help="simulated asynchronous work per valid request, ms (env SERVER_WORK_MS)",
    )
    parser.add_argument(
        "--max-message-bytes",
        type=cli.int_at_least(1),
        default=cli.env("SERVER_MAX_MESSAGE_BYTES", str(protocol.DEFAULT_MAX_MESSAGE_BYTES)),
        help="largest request accepted; larger frames are refused by zmq.MAXMSGSIZE "
        "(env SERVER_MAX_MESSAGE_BYTES)",
    )
    parser.add_argument(
        "--grace-s",
        type=cli.float_at_least(0),
        default=cli.env("SERVER_GRACE_S", "5"),
        help="on SIGTERM/SIGINT, time to finish requests in flight (env SERVER_GRACE_S)",
    )
    parser.add_argument(
        "--heartbeat-ms",
        type=cli.int_at_least(0),
        default=cli.env("SERVER_HEARTBEAT_MS", "10000"),
        help="ZMTP heartbeat interval, keeps idle connections open through nginx; "
        "0 disables (env SERVER_HEARTBEAT_MS)",
    )
    parser.add_argument(
        "--curve-secret-key",
        metavar="PATH",
        default=cli.env_optional("SERVER_CURVE_SECRET_KEY"),
        help="CurveZMQ: this server's .key_secret certificate (see keys.py); clients then "
        "need its public .key (env SERVER_CURVE_SECRET_KEY; default: no encryption)",
    )
    parser.add_argument(
        "--curve-authorized-keys",
        metavar="DIR",
        default=cli.env_optional("SERVER_CURVE_AUTHORIZED_KEYS"),
        help="CurveZMQ: directory of the client public keys (*.key) allowed to connect; "
        "others are refused by ZAP (env SERVER_CURVE_AUTHORIZED_KEYS; default: any client key)",
    )
    cli.add_log_level(parser, "INFO")
    args = parser.parse_args(argv)
    if args.bind is None:
        args.bind = cli.env_list("SERVER_BIND", "tcp://*:5555")
    if not args.bind:
        parser.error("--bind: at least one endpoint is needed")
    return args


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(
        bind=tuple(args.bind),
        name=args.name,
        socket_type=args.socket,
        max_inflight=args.max_inflight,
        work_ms=args.work_ms,
        max_message_bytes=args.max_message_bytes,
        grace_s=args.grace_s,
        heartbeat_ms=args.heartbeat_ms,
        curve_secret_key=args.curve_secret_key,
        curve_authorized_keys=args.curve_authorized_keys,
    )


async def run(config: ServerConfig) -> None:
    """Serve until SIGTERM or SIGINT, then drain and exit."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    context = zmq.asyncio.Context()
    try:
        server = Server(config, context)
        server.bind()
        await server.serve(stop)
    finally:
        context.term()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cli.setup_logging(args.log_level, "server")
    try:
        asyncio.run(run(config_from_args(args)))
    except zmq.ZMQError as error:
        logger.error("Cannot serve on %s: %s", ", ".join(args.bind), error)
        return 1
    except keys.CurveKeyError as error:
        logger.error("Cannot set up CURVE: %s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
