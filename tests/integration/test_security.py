"""CurveZMQ: encrypted, and only authorized client keys are served; also through nginx."""

from __future__ import annotations

import asyncio
import logging
import stat
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from reqrep import keys, protocol
from reqrep.channel import Channel, ChannelConfig
from reqrep.client import Client
from reqrep.commands import keys as keys_cli
from reqrep.errors import CurveKeyError, HandshakeFailed, RequestTimeout
from reqrep.stack import LocalStack
from tests.support import needs_nginx, run_script

TIMEOUT_S = 15.0
HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)


@dataclass(frozen=True)
class Keys:
    """Certificates made by keys.py: the server's, an authorized and an unknown client's."""

    server_secret: Path
    server_public: Path
    authorized_dir: Path
    alice_secret: Path  # authorized
    mallory_secret: Path  # a valid key pair the server does not know
    impostor_public: Path  # some other server's public key

    def server_overrides(self) -> dict[str, Any]:
        return {
            "curve_secret_key": str(self.server_secret),
            "curve_authorized_keys": str(self.authorized_dir),
        }

    def server_args(self) -> list[str]:
        return [
            "--curve-secret-key",
            str(self.server_secret),
            "--curve-authorized-keys",
            str(self.authorized_dir),
        ]


@pytest.fixture
def curve_keys(tmp_path: Path) -> Keys:
    secrets = tmp_path / "secrets"
    authorized = tmp_path / "authorized"
    keys.generate(secrets, ["server", "mallory", "impostor"])
    keys.generate(secrets, ["alice"], authorize=authorized)
    return Keys(
        server_secret=secrets / "server.key_secret",
        server_public=secrets / "server.key",
        authorized_dir=authorized,
        alice_secret=secrets / "alice.key_secret",
        mallory_secret=secrets / "mallory.key_secret",
        impostor_public=secrets / "impostor.key",
    )


def test_keys_command_writes_private_secrets_and_never_overwrites(tmp_path: Path) -> None:
    directory, authorized = tmp_path / "keys", tmp_path / "authorized"
    argv = ["generate", "--dir", str(directory), "--authorize", str(authorized), "c1", "c2"]
    assert keys_cli.main(argv) == 0
    for name in ("c1", "c2"):
        secret = directory / f"{name}.key_secret"
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        pair = keys.load_key_pair(secret)
        assert len(pair.public) == len(pair.secret) == 40
        # The public certificate, also the copy for the server, holds no secret.
        assert "secret-key" not in (directory / f"{name}.key").read_text()
        assert keys.load_public_key(authorized / f"{name}.key") == pair.public
    before = (directory / "c1.key_secret").read_bytes()
    assert keys_cli.main(["generate", "--dir", str(directory), "c1"]) == 1
    assert (directory / "c1.key_secret").read_bytes() == before
    with pytest.raises(CurveKeyError, match="no secret key"):
        keys.load_key_pair(directory / "c1.key")
    with pytest.raises(CurveKeyError, match="cannot read"):
        keys.load_key_pair(directory / "missing.key_secret")
    assert keys_cli.main(["generate", "--dir", str(directory), "../escape"]) == 1


def _curve_client(
    make_client: Callable[..., Client],
    endpoints: list[str],
    server_key: Path | None,
    secret_key: Path | None,
    **overrides: Any,
) -> Client:
    return make_client(
        endpoints,
        curve_server_key=None if server_key is None else str(server_key),
        curve_secret_key=None if secret_key is None else str(secret_key),
        **overrides,
    )


async def test_authorized_client_is_served(
    start_server: Callable[..., Any], make_client: Callable[..., Client], curve_keys: Keys
) -> None:
    server = await start_server(**curve_keys.server_overrides())
    alice = _curve_client(
        make_client, [server.endpoint], curve_keys.server_public, curve_keys.alice_secret
    )
    async with asyncio.timeout(TIMEOUT_S):
        ok = await alice.request(protocol.encode_request("alice", b"secret payload"))
        bad = await alice.request(protocol.encode_request_without_address(b"x"))
    assert ok.ok
    assert bad.status == "Invalid message"


async def _handshake_failure(
    context: zmq.asyncio.Context, endpoint: str, server_key: Path | None, secret_key: Path | None
) -> int:
    """Connect a REQ socket set up as the client would be; return the handshake failure event.

    Fails the test if a request sent on it is answered instead.
    """
    sock = context.socket(zmq.REQ)
    monitor = sock.get_monitor_socket(HANDSHAKE_FAILED | zmq.EVENT_HANDSHAKE_SUCCEEDED)
    try:
        sock.linger = 0
        curve = keys.ClientCurve.load(server_key, secret_key)
        if curve is not None:
            curve.apply(sock)
        sock.connect(endpoint)
        await sock.send_multipart(protocol.encode_request("intruder", b"let me in"))
        event = parse_monitor_message(await monitor.recv_multipart())
        # The connection never got through, so the request never left: nothing comes back.
        assert not await sock.poll(0)
        return int(event["event"])
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)
        sock.close(linger=0)


REFUSED = [
    pytest.param(None, None, "one side uses CURVE", "mechanism", id="no-key"),
    pytest.param(
        "server_public", "mallory_secret", "refused this client's key", "auth", id="unknown-key"
    ),
    pytest.param("server_public", None, "refused this client's key", "auth", id="throwaway-key"),
    pytest.param(
        "impostor_public", "alice_secret", "probably not the server's", "key", id="wrong-server-key"
    ),
]


@pytest.mark.parametrize(("server_key", "secret_key", "client_says", "server_counts"), REFUSED)
async def test_refused_clients_are_told_why_and_the_server_logs_it_and_serves_on(
    start_server: Callable[..., Any],
    make_client: Callable[..., Client],
    context: zmq.asyncio.Context,
    curve_keys: Keys,
    caplog: pytest.LogCaptureFixture,
    server_key: str | None,
    secret_key: str | None,
    client_says: str,
    server_counts: str,
) -> None:
    server = await start_server(**curve_keys.server_overrides(), metrics_port=0)
    server_path = None if server_key is None else getattr(curve_keys, server_key)
    secret_path = None if secret_key is None else getattr(curve_keys, secret_key)
    async with asyncio.timeout(TIMEOUT_S):
        event = await _handshake_failure(context, server.endpoint, server_path, secret_path)
    assert event & HANDSHAKE_FAILED, f"unexpected monitor event {event:#x}"
    if secret_key == "mallory_secret":
        assert event == zmq.EVENT_HANDSHAKE_FAILED_AUTH  # refused by ZAP, not by chance
    intruder = _curve_client(
        make_client, [server.endpoint], server_path, secret_path, timeout_ms=300, tries=2
    )
    alice = _curve_client(
        make_client, [server.endpoint], curve_keys.server_public, curve_keys.alice_secret
    )
    caplog.set_level(logging.WARNING, logger="reqrep.server")
    async with asyncio.timeout(TIMEOUT_S):
        with pytest.raises(HandshakeFailed) as raised:
            await intruder.request(protocol.encode_request("intruder", b"x"))
        assert (await alice.request(protocol.encode_request("alice", b"x"))).ok
    assert client_says in str(raised.value)
    refusals = [r.getMessage() for r in caplog.records if "Refused a client" in r.getMessage()]
    assert refusals, "the server logged no refused handshake"
    assert server.server.metrics is not None
    counted = server.server.metrics.read_now().refused
    assert counted[server_counts] >= 1
    assert sum(counted.values()) == counted[server_counts]


async def test_curve_without_authorized_keys_encrypts_for_any_client_key(
    start_server: Callable[..., Any], make_client: Callable[..., Client], curve_keys: Keys
) -> None:
    server = await start_server(curve_secret_key=str(curve_keys.server_secret))
    anyone = _curve_client(make_client, [server.endpoint], curve_keys.server_public, None)
    plain = make_client([server.endpoint], timeout_ms=300, tries=1)
    async with asyncio.timeout(TIMEOUT_S):
        assert (await anyone.request(protocol.encode_request("anyone", b"x"))).ok
        with pytest.raises(RequestTimeout):
            await plain.request(protocol.encode_request("plain", b"x"))


async def _client_cli(endpoint: str, *args: str) -> tuple[int, str, str]:
    done = await run_script(
        "client.py",
        *("--connect", endpoint, "--requests", "3", "--malformed", "1"),
        *("--timeout-ms", "500", "--tries", "2", *args),
        timeout_s=TIMEOUT_S,
    )
    return done.status, done.stdout, done.stderr


@pytest.mark.nginx
@needs_nginx
async def test_through_nginx_only_authorized_clients_are_served(curve_keys: Keys) -> None:
    """Server and client processes, configured by flags; nginx forwards CURVE untouched."""
    server_key = ["--curve-server-key", str(curve_keys.server_public)]
    async with LocalStack(2, nginx=True, server_args=curve_keys.server_args()) as stack:
        (endpoint,) = stack.endpoints
        alice = await _client_cli(
            endpoint, *server_key, "--curve-secret-key", str(curve_keys.alice_secret)
        )
        mallory = await _client_cli(
            endpoint, *server_key, "--curve-secret-key", str(curve_keys.mallory_secret)
        )
        nokey = await _client_cli(endpoint)
    status, stdout, stderr = alice
    assert status == 0, stderr
    assert stdout.count("Received response: Server response") == 2
    assert stdout.count("Received response: Invalid message") == 1
    # Without CURVE, which of the two sides sees the mismatch first is a race through nginx.
    for (status, stdout, stderr), why in (
        (mallory, "the server refused this client's key (ZAP status 400)"),
        (nokey, "CURVE encryption"),
    ):
        assert status == 1
        assert "Received response" not in stdout
        (line,) = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert line.startswith(f"error: server at {endpoint} did not answer request 0 after 2")
        assert why in line


async def test_bad_client_key_files_are_reported_clearly(tmp_path: Path) -> None:
    async with LocalStack(1, nginx=False) as stack:
        (endpoint,) = stack.endpoints
        missing = str(tmp_path / "nope.key")
        status, stdout, stderr = await _client_cli(endpoint, "--curve-server-key", missing)
    assert status == 1
    assert stdout == ""
    assert f"error: cannot read CURVE certificate {missing}" in stderr


@pytest.mark.parametrize(
    ("args", "status", "complaint"),
    [
        (["--curve-secret-key", "{public}"], 1, "Cannot set up CURVE: "),
        (["--curve-secret-key", "{missing}"], 1, "Cannot set up CURVE: cannot read CURVE"),
        (["--curve-authorized-keys", "{authorized}"], 2, "needs --curve-secret-key"),
        (
            ["--curve-secret-key", "{secret}", "--curve-authorized-keys", "{missing}"],
            1,
            "Cannot set up CURVE: authorized keys directory",
        ),
        (
            ["--curve-secret-key", "{secret}", "--curve-authorized-keys", "{empty}"],
            1,
            "Cannot set up CURVE: no client public key (*.key) in",
        ),
    ],
    ids=["public-half", "missing-file", "keys-without-secret", "missing-directory", "no-keys"],
)
async def test_bad_server_key_settings_stop_it_at_once(
    tmp_path: Path, curve_keys: Keys, args: list[str], status: int, complaint: str
) -> None:
    paths = {
        "public": str(curve_keys.server_public),
        "secret": str(curve_keys.server_secret),
        "authorized": str(curve_keys.authorized_dir),
        "missing": str(tmp_path / "missing"),
        "empty": str(tmp_path),
    }
    done = await run_script(
        "server.py",
        *("--bind", "tcp://127.0.0.1:*", "--name", "bad"),
        *(arg.format(**paths) for arg in args),
        timeout_s=TIMEOUT_S,
    )
    assert done.status == status
    assert complaint in done.stderr
    assert "Traceback" not in done.stderr


async def test_a_channel_is_encrypted_and_authorized_like_a_client(
    start_server: Callable[..., Any], curve_keys: Keys
) -> None:
    """The multiplexing Channel with CURVE: served with an authorized key, told why without."""
    server = await start_server(**curve_keys.server_overrides())
    alice = ChannelConfig(
        endpoints=(server.endpoint,),
        curve_server_key=str(curve_keys.server_public),
        curve_secret_key=str(curve_keys.alice_secret),
    )
    mallory = replace(alice, curve_secret_key=str(curve_keys.mallory_secret), timeout_ms=300)
    async with asyncio.timeout(TIMEOUT_S):
        async with Channel(alice) as channel:
            replies = await asyncio.gather(*(channel.call(b"x") for _ in range(20)))
        async with Channel(mallory) as channel:
            with pytest.raises(HandshakeFailed, match="refused this client's key"):
                await channel.call(b"x")
    assert replies == [b""] * 20


@pytest.mark.nginx
@needs_nginx
async def test_a_channel_through_nginx_with_curve(curve_keys: Keys) -> None:
    async with LocalStack(2, nginx=True, server_args=curve_keys.server_args()) as stack:
        config = ChannelConfig(
            endpoints=tuple(stack.endpoints),
            connections=2,
            curve_server_key=str(curve_keys.server_public),
            curve_secret_key=str(curve_keys.alice_secret),
        )
        async with asyncio.timeout(TIMEOUT_S), Channel(config) as channel:
            replies = await asyncio.gather(
                *(channel.request(protocol.encode_request("alice", b"x")) for _ in range(50))
            )
    assert all(reply.ok for reply in replies)
