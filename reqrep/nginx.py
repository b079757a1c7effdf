"""nginx for the local stack: finding the binary, and the text of its configuration.

The proxy settings every nginx of the project shares (compose, Swarm, Kubernetes
and the local stack) are one file, deploy/nginx/zmq-proxy.conf, shipped inside
the package as ``reqrep/zmq-proxy.conf`` (a link to it in a checkout, a copy once
installed); the local stack's config includes it and writes only its upstream,
listen address and limits. Starting and stopping nginx is ``reqrep.stack``'s job.
"""

from __future__ import annotations

import importlib.resources
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from reqrep.errors import StackError

UPSTREAM_SERVER_PARAMETERS: Final = "max_fails=2 fail_timeout=3s"
DEBIAN_NGINX: Final = Path("/usr/sbin/nginx")  # not on a non-root user's PATH
DEBIAN_STREAM_MODULE: Final = Path("/usr/lib/nginx/modules/ngx_stream_module.so")


def shared_conf() -> Path:
    """deploy/nginx/zmq-proxy.conf, as the package carries it."""
    return Path(str(importlib.resources.files("reqrep") / "zmq-proxy.conf"))


def binary() -> str | None:
    """nginx on PATH, else Debian's; None if neither is installed."""
    return shutil.which("nginx") or (str(DEBIAN_NGINX) if DEBIAN_NGINX.exists() else None)


def stream_module(nginx: str) -> Path | None:
    """Debian builds the stream module as a loadable module; official nginx has it built in."""
    version = subprocess.run([nginx, "-V"], capture_output=True, text=True, check=False).stderr
    if "--with-stream=dynamic" in version and DEBIAN_STREAM_MODULE.exists():
        return DEBIAN_STREAM_MODULE
    return None


def local_conf(
    listen_port: int,
    upstreams: Sequence[str],
    *,
    load_module: Path | None = None,
    overrides: dict[str, str] | None = None,
) -> str:
    """The local stack's own nginx config: what is particular to it, and an include.

    The proxy settings every target shares come from ``include`` of
    deploy/nginx/zmq-proxy.conf (which includes ``zmq-limits.conf`` from the
    directory of this config). Written here: one upstream ``server`` per
    loopback replica, with the same balancing and passive health checks as the
    other targets, the listen address, and ``overrides``: directives set again
    in the ``server`` block, which replace the shared values there, e.g.
    ``{"proxy_timeout": "1s"}``. The replicas' addresses are static: the local
    nginx may be older than 1.27.3, which has no ``resolve``.
    """
    if not upstreams:
        raise StackError("no replica to point nginx at")
    servers = "".join(
        f"        server {address} {UPSTREAM_SERVER_PARAMETERS};\n" for address in upstreams
    )
    settings = "".join(
        f"        {directive} {value};\n" for directive, value in (overrides or {}).items()
    )
    module = "" if load_module is None else f"load_module {load_module};\n"
    return (
        f"{module}pid nginx.pid;\n"
        "worker_processes auto;\n"
        "worker_shutdown_timeout 2s;\n"
        "events {\n    worker_connections 4096;\n}\n"
        "stream {\n"
        f'    include "{shared_conf()}";\n'
        "    upstream zmq_servers {\n"
        "        least_conn;\n"
        "        zone zmq_servers 64k;\n"
        f"{servers}"
        "    }\n"
        "    server {\n"
        f"        listen 127.0.0.1:{listen_port};\n"
        "        proxy_pass zmq_servers;\n"
        f"{settings}"
        "    }\n"
        "}\n"
    )


def local_limits(conn_limit: int) -> str:
    """The local stack's ``zmq-limits.conf``: every local client has the address 127.0.0.1."""
    return f"limit_conn zmq_per_address {conn_limit};\n"
