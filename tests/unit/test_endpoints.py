"""reqrep.endpoints: every endpoint checked before a socket sees it, the error naming it."""

from __future__ import annotations

import pytest

from reqrep import endpoints
from reqrep.errors import ConfigError, EndpointError


@pytest.mark.parametrize(
    ("endpoint", "bind"),
    [
        ("tcp://localhost:5555", False),
        ("tcp://10.0.0.1:1", False),
        ("tcp://[::1]:5555", False),
        ("tcp://nginx:5555", False),
        ("tcp://127.0.0.1:5000;server:5555", False),
        ("tcp://*:5555", True),
        ("tcp://127.0.0.1:*", True),
        ("tcp://*:0", True),
        ("tcp://eth0:!", True),
        ("tcp://*:[6000-7000]", True),
        ("ipc:///tmp/reqrep.sock", False),
        ("inproc://replica", True),
    ],
)
def test_usable_endpoints_pass_unchanged(endpoint: str, bind: bool) -> None:
    assert endpoints.check(endpoint, bind=bind) == endpoint


@pytest.mark.parametrize(
    ("endpoint", "bind", "message"),
    [
        ("notanendpoint", False, "'notanendpoint' is not an endpoint: expected tcp://HOST:PORT"),
        ("localhost:5555", False, "is not an endpoint"),
        ("tcp://localhost", False, "'tcp://localhost' has no port"),
        ("tcp://:5555", False, "'tcp://:5555' has no host"),
        ("tcp://localhost:99999", False, "port '99999' is not a number from 1 to 65535"),
        ("tcp://localhost:0", False, "port '0' is not a number from 1 to 65535"),
        ("tcp://localhost:http", False, "port 'http' is not a number"),
        ("tcp://*:5555", False, "'*' can be bound, not connected to"),
        ("tcp://[::1:5555", False, "unbalanced brackets"),
        ("udp://host:5555", False, "unsupported transport 'udp'"),
        ("tcp://", True, "has nothing after tcp://"),
        ("tcp://*:70000", True, "port '70000' is not a number from 0 to 65535"),
    ],
)
def test_malformed_endpoints_are_refused_naming_the_endpoint(
    endpoint: str, bind: bool, message: str
) -> None:
    with pytest.raises(EndpointError) as raised:
        endpoints.check(endpoint, bind=bind)
    assert message in str(raised.value)
    assert isinstance(raised.value, ConfigError)


def test_check_all_needs_one_and_checks_each() -> None:
    assert endpoints.check_all(["tcp://a:1", "tcp://b:2"]) == ("tcp://a:1", "tcp://b:2")
    with pytest.raises(EndpointError, match="at least one endpoint"):
        endpoints.check_all([])
    with pytest.raises(EndpointError, match="'tcp://b' has no port"):
        endpoints.check_all(["tcp://a:1", "tcp://b"])
