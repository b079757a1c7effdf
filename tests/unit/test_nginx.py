"""nginx's config: the proxy settings in one shared file, and per target only what differs.

deploy/nginx/zmq-proxy.conf holds every ZeroMQ proxy setting (timeouts,
retries, access log, per-address limit); compose (nginx.conf), Swarm
(deploy/swarm/nginx.conf), Kubernetes (deploy/kubernetes/nginx.conf) and the
local stack (reqrep.nginx.local_conf) each write only where the replicas
are, how they are found and where nginx listens, and include it. Here, without
nginx or Docker: each target's file statement by statement, that no other file
sets a shared setting, and that each target ships the shared files where its
include looks. tests/system/ runs them (``nginx -t`` in the image, real stacks).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from reqrep import nginx
from tests.support import PROJECT_DIR, nginx_statements

SHARED = PROJECT_DIR / "deploy" / "nginx" / "zmq-proxy.conf"
LIMITS = PROJECT_DIR / "deploy" / "nginx" / "zmq-limits.conf"
SWARM_DIR = PROJECT_DIR / "deploy" / "swarm"
# What a replica is declared with everywhere: passive health checks.
HEALTH = "max_fails=2 fail_timeout=3s"
DOCKER_DNS = "resolver 127.0.0.11 valid=2s ipv6=off;"
# Swarm's answers are kept for 1 s: a rolling update must not find a stale one.
SWARM_DNS = "resolver 127.0.0.11 valid=1s ipv6=off;"
# The main context of the targets whose nginx runs as root (compose, Swarm).
ROOT_MAIN = ["user nginx;", "worker_processes auto;", "worker_shutdown_timeout 2s;"]
EVENTS = ["events {", "worker_connections 4096;", "}"]


def stream(resolver: list[str], include: str, servers: list[str], listen: str) -> list[str]:
    """The stream block every target has; the arguments are what differs."""
    return [
        "stream {",
        *resolver,
        f"include {include};",
        "upstream zmq_servers {",
        "least_conn;",
        "zone zmq_servers 64k;",
        *(f"server {server} {HEALTH};" for server in servers),
        "}",
        "server {",
        f"listen {listen};",
        "proxy_pass zmq_servers;",
        "}",
        "}",
    ]


TARGETS = {
    "compose": (
        PROJECT_DIR / "nginx.conf",
        [
            *ROOT_MAIN,
            *EVENTS,
            *stream([DOCKER_DNS], "zmq-proxy.conf", ["server:5555 resolve"], "5555"),
        ],
    ),
    "swarm": (
        SWARM_DIR / "nginx.conf",
        [
            *ROOT_MAIN,
            *EVENTS,
            *stream([SWARM_DNS], "zmq-proxy.conf", ["tasks.server:5555 resolve"], "5555"),
        ],
    ),
    "kubernetes": (
        PROJECT_DIR / "deploy" / "kubernetes" / "nginx.conf",
        [
            # No `user`: the pod runs nginx unprivileged; the pid file in an emptyDir.
            "worker_processes auto;",
            "pid /tmp/nginx.pid;",
            "worker_shutdown_timeout 2s;",
            *EVENTS,
            *stream(
                ["resolver kube-dns.kube-system.svc.cluster.local valid=5s ipv6=off;"],
                "zmq-proxy.conf",
                ["zmq-server.zmq-request-reply.svc.cluster.local:5555 resolve"],
                "5555",
            ),
        ],
    ),
}


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_target_file_holds_only_its_upstream_resolver_and_listen(target: str) -> None:
    path, expected = TARGETS[target]
    assert nginx_statements(path.read_text()) == expected


def test_local_stack_writes_static_loopback_upstreams_and_the_include() -> None:
    """The local nginx may be older than 1.27.3: static addresses, no resolver."""
    text = nginx.local_conf(6000, ["127.0.0.1:7001", "127.0.0.1:7002"])
    assert nginx_statements(text) == [
        "pid nginx.pid;",
        "worker_processes auto;",
        "worker_shutdown_timeout 2s;",
        *EVENTS,
        *stream(
            [], f'"{nginx.shared_conf()}"', ["127.0.0.1:7001", "127.0.0.1:7002"], "127.0.0.1:6000"
        ),
    ]
    assert nginx.UPSTREAM_SERVER_PARAMETERS == HEALTH


def test_the_package_carries_the_shared_settings_file() -> None:
    """reqrep/zmq-proxy.conf is deploy/nginx/zmq-proxy.conf (a link in a checkout, a copy once
    installed), so the local stack includes the same settings as every other target."""
    assert nginx.shared_conf().read_text() == SHARED.read_text()
    assert nginx.shared_conf().resolve() == SHARED.resolve()


def test_local_stack_overrides_go_in_its_server_block() -> None:
    """A setting given again in the server block replaces the shared one there."""
    text = nginx.local_conf(
        6000, ["127.0.0.1:7001"], load_module=Path("/m.so"), overrides={"proxy_timeout": "1s"}
    )
    statements = nginx_statements(text)
    assert statements[0] == "load_module /m.so;"
    assert statements[statements.index("server {") :] == [
        "server {",
        "listen 127.0.0.1:6000;",
        "proxy_pass zmq_servers;",
        "proxy_timeout 1s;",
        "}",
        "}",
    ]
    assert nginx.local_limits(7) == "limit_conn zmq_per_address 7;\n"


def shared_directives() -> set[str]:
    """The names of the directives the shared file sets (its include aside)."""
    return {statement.split()[0] for statement in nginx_statements(SHARED.read_text())} - {
        "include"
    }


def project_files() -> list[Path]:
    """Every file of the project that could hold nginx settings (configs, manifests, images)."""
    skip = {".git", ".venv", "node_modules", ".mypy_cache", ".ruff_cache", ".pytest_cache"}
    found = []
    for path in PROJECT_DIR.rglob("*"):
        if skip & set(path.relative_to(PROJECT_DIR).parts) or not path.is_file():
            continue
        if path.is_symlink() and path.resolve() == SHARED.resolve():  # the package's link to it
            continue
        if path.suffix in {".conf", ".yaml", ".yml", ".tpl"} or path.name.startswith("Dockerfile"):
            found.append(path)
    return found


def test_each_proxy_setting_is_set_in_the_shared_file_only() -> None:
    names = shared_directives()
    assert {"proxy_connect_timeout", "proxy_timeout", "access_log", "limit_conn_zone"} <= names
    setting = re.compile(rf"^\s*({'|'.join(map(re.escape, sorted(names)))})\s", re.MULTILINE)
    elsewhere = {
        str(path.relative_to(PROJECT_DIR)): sorted(set(setting.findall(path.read_text())))
        for path in project_files()
        if path != SHARED
    }
    assert {path: found for path, found in elsewhere.items() if found} == {}
    # The local stack writes none of them either, unless a test overrides one.
    assert not setting.search(nginx.local_conf(6000, ["127.0.0.1:7001"]))


def test_default_connection_limit_is_200_per_client_address() -> None:
    shared = nginx_statements(SHARED.read_text())
    assert "limit_conn_zone $binary_remote_addr zone=zmq_per_address:1m;" in shared
    assert "include zmq-limits.conf;" in shared
    assert nginx_statements(LIMITS.read_text()) == ["limit_conn zmq_per_address 200;"]


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def test_compose_image_and_stack_ship_the_shared_files_next_to_nginx_conf() -> None:
    """nginx resolves `include zmq-proxy.conf` in the directory of its main config."""
    dockerfile = (PROJECT_DIR / "Dockerfile_nginx").read_text()
    assert "COPY nginx.conf /etc/nginx/nginx.conf" in dockerfile
    assert "COPY deploy/nginx/zmq-proxy.conf deploy/nginx/zmq-limits.conf /etc/nginx/" in dockerfile
    (mount,) = load_yaml(PROJECT_DIR / "docker-compose.yml")["services"]["nginx"]["volumes"]
    assert mount["target"] == "/etc/nginx/zmq-limits.conf"
    assert mount["source"] == "${NGINX_LIMITS:-./deploy/nginx/zmq-limits.conf}"
    assert mount["read_only"] is True


def test_swarm_stack_gives_nginx_its_config_and_the_shared_files() -> None:
    stack_file = load_yaml(SWARM_DIR / "docker-stack.yml")
    targets = {
        config["target"]: (SWARM_DIR / stack_file["configs"][config["source"]]["file"]).resolve()
        for config in stack_file["services"]["nginx"]["configs"]
    }
    assert targets == {
        "/etc/nginx/nginx.conf": SWARM_DIR / "nginx.conf",
        "/etc/nginx/zmq-proxy.conf": SHARED,
        "/etc/nginx/zmq-limits.conf": LIMITS,
    }
