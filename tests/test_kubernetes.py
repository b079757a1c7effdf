"""The Kubernetes manifests in deploy/kubernetes/, checked offline.

Every resource is validated against the Kubernetes JSON schemas that the pinned
``kubernetes-validate`` package ships (no cluster, no network), strictly, so an
unknown or misspelled field fails. The server container must use flags that
server.py really has and probe with a real ``client.py --ping``; the nginx
config in the ConfigMap must be the stream logic of the project's nginx.conf,
apart from how replicas are discovered.

The helpers that read an nginx config are shared with tests/test_swarm.py.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

import client
import server

PROJECT_DIR = Path(__file__).resolve().parent.parent
MANIFESTS_DIR = PROJECT_DIR / "deploy" / "kubernetes"
NGINX_CONF = PROJECT_DIR / "nginx.conf"
# The Kubernetes version whose schemas the manifests must satisfy.
KUBERNETES_VERSION = "1.30.0"
NAMESPACE = "zmq-request-reply"
CLUSTER_DOMAIN = "cluster.local"
SERVER_PORT = 5555
PING_COMMAND = [
    "python",
    "client.py",
    "--ping",
    "--connect",
    f"tcp://127.0.0.1:{SERVER_PORT}",
    "--timeout-ms",
    "1000",
    "--retries",
    "1",
]
DEBIAN_STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")


# --- reading nginx configs ---------------------------------------------------


@dataclass(frozen=True)
class Directive:
    """One nginx directive: ``path`` names the enclosing blocks, e.g. ``stream/server``."""

    path: str
    name: str
    args: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.path or '(main)'}: {' '.join([self.name, *self.args])}"


_TOKEN = re.compile(r"""#[^\n]*|'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|[{};]|[^\s{};'"#]+""")


def nginx_directives(text: str) -> list[Directive]:
    """Every directive of an nginx config, in order, blocks flattened into paths."""
    result: list[Directive] = []
    blocks: list[str] = []
    words: list[str] = []
    for token in _TOKEN.findall(text):
        if token.startswith("#"):
            continue
        if token == ";":
            result.append(Directive("/".join(blocks), words[0], tuple(words[1:])))
            words = []
        elif token == "{":
            result.append(Directive("/".join(blocks), words[0], tuple(words[1:])))
            blocks.append(words[0])
            words = []
        elif token == "}":
            if words or not blocks:
                raise ValueError(f"unbalanced '}}' after {words!r}")
            blocks.pop()
        else:
            words.append(token[1:-1] if token[0] in "'\"" else token)
    if blocks or words:
        raise ValueError(f"unterminated config: open blocks {blocks!r}, words {words!r}")
    return result


# Top-level directives that depend on where nginx runs, not on what it does:
# `user` needs a root master (Kubernetes runs nginx as non-root), `pid` must
# go where the filesystem is writable.
PLACEMENT = frozenset({"user", "pid"})


@dataclass(frozen=True)
class StreamLogic:
    """An nginx config split into its discovery part and everything else."""

    common: list[Directive]
    # host:port that replicas are found by, and the upstream `server` parameters
    target: str
    balancing: list[Directive]


def static_stream_logic(text: str) -> StreamLogic:
    """The project's nginx.conf: one `upstream` block that `proxy_pass` names."""
    directives = nginx_directives(text)
    upstreams = [d for d in directives if d.path == "stream" and d.name == "upstream"]
    assert len(upstreams) == 1, "nginx.conf has one upstream block"
    upstream_name = upstreams[0].args[0]
    upstream_path = "stream/upstream"
    servers = [d for d in directives if d.path == upstream_path and d.name == "server"]
    assert len(servers) == 1, "the upstream names the replicas by one DNS name"
    proxy_pass = [d for d in directives if d.name == "proxy_pass"]
    assert [d.args for d in proxy_pass] == [(upstream_name,)]
    common = [
        d
        for d in directives
        if d not in upstreams + proxy_pass
        and d.path != upstream_path
        and not (d.path == "" and d.name in PLACEMENT)
    ]
    balancing = [d for d in directives if d.path == upstream_path]
    return StreamLogic(common, servers[0].args[0], balancing)


def dynamic_stream_logic(text: str) -> StreamLogic:
    """A config that resolves the replicas' name while running.

    `proxy_pass $var` with `set $var host:port` in the same server block and
    a `resolver ... valid=5s` in the stream block; no `upstream` block, since
    a variable naming one would bypass the resolver.
    """
    directives = nginx_directives(text)
    assert not [d for d in directives if d.name == "upstream"], "no upstream block"
    resolvers = [d for d in directives if d.name == "resolver"]
    assert len(resolvers) == 1
    assert resolvers[0].path == "stream"
    assert "valid=5s" in resolvers[0].args, "resolved names are cached for 5 s"
    proxy_pass = [d for d in directives if d.name == "proxy_pass"]
    assert len(proxy_pass) == 1
    variable = proxy_pass[0].args[0]
    assert variable.startswith("$"), "proxy_pass takes a variable, resolved per connection"
    sets = [d for d in directives if d.name == "set"]
    assert [(d.path, d.args[0]) for d in sets] == [(proxy_pass[0].path, variable)]
    discovery = [*resolvers, *proxy_pass, *sets]
    discovery += [d for d in directives if d.name == "resolver_timeout"]
    common = [
        d for d in directives if d not in discovery and not (d.path == "" and d.name in PLACEMENT)
    ]
    return StreamLogic(common, sets[0].args[1], [])


def assert_same_stream_logic(dynamic_text: str, dynamic_host: str) -> None:
    """``dynamic_text`` does what nginx.conf does, finding replicas at ``dynamic_host``."""
    static = static_stream_logic(NGINX_CONF.read_text())
    dynamic = dynamic_stream_logic(dynamic_text)
    # As text, so that a failure shows the differing directives.
    assert [str(d) for d in dynamic.common] == [str(d) for d in static.common]
    static_port = static.target.rpartition(":")[2]
    assert dynamic.target == f"{dynamic_host}:{static_port}"
    # What a resolved name cannot keep (see the comment in the configs).
    assert {d.name for d in static.balancing} <= {"least_conn", "zone", "server"}


def nginx_check(conf_text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``nginx -t`` on a config, with Debian's stream module loaded if needed.

    Runs as the current user with a private prefix: `user` and `pid` are
    rewritten, and the resolver is pointed at 127.0.0.1, since nginx resolves
    a resolver's own name when it reads the config.
    """
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    text = re.sub(r"(?m)^\s*(user|pid)\s[^;]*;", "", conf_text)
    text = re.sub(r"(?m)^(\s*resolver)\s+\S+", r"\1 127.0.0.1", text)
    version = subprocess.run([binary, "-V"], capture_output=True, text=True, check=True).stderr
    if "--with-stream=dynamic" in version:
        text = f"load_module {DEBIAN_STREAM_MODULE};\n{text}"
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"pid {tmp_path / 'nginx.pid'};\n{text}")
    return subprocess.run(
        [binary, "-t", "-p", str(tmp_path), "-c", str(conf), "-e", "stderr"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


needs_nginx = pytest.mark.skipif(
    shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists(),
    reason="nginx is not installed",
)


# --- the manifests -----------------------------------------------------------


def load_manifests() -> list[dict[str, Any]]:
    resources: list[dict[str, Any]] = []
    for path in sorted(MANIFESTS_DIR.glob("*.yaml")):
        resources += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return resources


@pytest.fixture(scope="module")
def manifests() -> list[dict[str, Any]]:
    return load_manifests()


def find(manifests: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"] == name]
    assert len(matches) == 1, f"one {kind} {name}"
    return matches[0]


def containers(manifests: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for deployment in (m for m in manifests if m["kind"] == "Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            yield deployment["metadata"]["name"], container


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any attempt to open a network connection: validation is offline."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"network access during offline validation: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.mark.usefixtures("no_network")
def test_every_manifest_is_valid_against_the_kubernetes_schemas(
    manifests: list[dict[str, Any]],
) -> None:
    kinds = sorted(f"{m['kind']}/{m['metadata']['name']}" for m in manifests)
    assert kinds == [
        "ConfigMap/zmq-nginx",
        "Deployment/zmq-nginx",
        "Deployment/zmq-server",
        "Namespace/zmq-request-reply",
        "PodDisruptionBudget/zmq-server",
        "Service/zmq-nginx",
        "Service/zmq-server",
    ]
    for resource in manifests:
        # Raises ValidationError, or SchemaNotFoundError for an unknown kind.
        kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)


@pytest.mark.usefixtures("no_network")
def test_the_validator_rejects_a_broken_manifest(manifests: list[dict[str, Any]]) -> None:
    deployment = find(manifests, "Deployment", "zmq-server")
    misspelled = {**deployment, "spec": {**deployment["spec"], "replica": 3}}
    with pytest.raises(kubernetes_validate.ValidationError, match="replica"):
        kubernetes_validate.validate(misspelled, KUBERNETES_VERSION, strict=True)
    wrong_type = {**deployment, "spec": {**deployment["spec"], "replicas": "three"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong_type, KUBERNETES_VERSION, strict=True)


def test_everything_is_in_one_namespace(manifests: list[dict[str, Any]]) -> None:
    for resource in manifests:
        if resource["kind"] != "Namespace":
            assert resource["metadata"]["namespace"] == NAMESPACE, resource["metadata"]["name"]


def test_services_select_their_deployments_pods(manifests: list[dict[str, Any]]) -> None:
    for name in ("zmq-server", "zmq-nginx"):
        deployment = find(manifests, "Deployment", name)
        service = find(manifests, "Service", name)
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= pod_labels.items()
        assert service["spec"]["selector"].items() <= pod_labels.items()
        container_ports = {
            p["name"]: p["containerPort"]
            for c in deployment["spec"]["template"]["spec"]["containers"]
            for p in c["ports"]
        }
        for port in service["spec"]["ports"]:
            assert container_ports[port["targetPort"]] == SERVER_PORT
            assert port["port"] == SERVER_PORT
    budget = find(manifests, "PodDisruptionBudget", "zmq-server")
    server_pods = find(manifests, "Deployment", "zmq-server")["spec"]["template"]["metadata"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= server_pods["labels"].items()


def test_server_service_is_headless(manifests: list[dict[str, Any]]) -> None:
    """No virtual IP: DNS answers with every Ready replica, and nginx balances."""
    assert find(manifests, "Service", "zmq-server")["spec"]["clusterIP"] == "None"


def test_server_container_runs_server_py_with_its_real_flags(
    manifests: list[dict[str, Any]],
) -> None:
    container = find(manifests, "Deployment", "zmq-server")["spec"]["template"]["spec"][
        "containers"
    ][0]
    assert container["command"] == ["python", "server.py"]
    # server.py's own parser accepts them (argparse exits on an unknown flag).
    args = server.parse_args(container["args"])
    assert args.bind == [f"tcp://*:{SERVER_PORT}"]
    deployment = find(manifests, "Deployment", "zmq-server")
    grace_period_s = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert args.grace_s < grace_period_s, "the replica drains before Kubernetes kills it"


def test_server_probes_ping_through_the_replicas_own_socket(
    manifests: list[dict[str, Any]],
) -> None:
    container = find(manifests, "Deployment", "zmq-server")["spec"]["template"]["spec"][
        "containers"
    ][0]
    for probe in ("readinessProbe", "livenessProbe"):
        command = container[probe]["exec"]["command"]
        assert command == PING_COMMAND
        args = client.parse_args(command[2:])
        assert args.ping
        # The probe's own deadline leaves room for Python to start and the ping.
        assert args.timeout_ms * args.retries < container[probe]["timeoutSeconds"] * 1000


def test_containers_run_unprivileged_with_bounded_resources(
    manifests: list[dict[str, Any]],
) -> None:
    for deployment in (m for m in manifests if m["kind"] == "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] > 0
        assert pod["automountServiceAccountToken"] is False
    for name, container in containers(manifests):
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True, name
        assert security["allowPrivilegeEscalation"] is False, name
        assert security["capabilities"]["drop"] == ["ALL"], name
        assert {"cpu", "memory"} <= container["resources"]["requests"].keys(), name
        assert "memory" in container["resources"]["limits"], name
        assert "readinessProbe" in container, name
        assert "livenessProbe" in container, name


def test_nginx_runs_the_configmaps_config(manifests: list[dict[str, Any]]) -> None:
    pod = find(manifests, "Deployment", "zmq-nginx")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    config_volume = next(v for v in pod["volumes"] if "configMap" in v)
    assert config_volume["configMap"]["name"] == "zmq-nginx"
    mount = next(m for m in container["volumeMounts"] if m["name"] == config_volume["name"])
    arguments = container["command"] + container["args"]
    assert arguments[arguments.index("-c") + 1] == f"{mount['mountPath']}/nginx.conf"
    # The pid file is written where an emptyDir is mounted.
    conf = find(manifests, "ConfigMap", "zmq-nginx")["data"]["nginx.conf"]
    pid = next(d for d in nginx_directives(conf) if d.name == "pid")
    writable = [
        m["mountPath"]
        for m in container["volumeMounts"]
        if any(v["name"] == m["name"] and "emptyDir" in v for v in pod["volumes"])
    ]
    assert any(pid.args[0].startswith(f"{path}/") for path in writable)


def test_configmap_nginx_conf_is_the_stream_logic_of_nginx_conf(
    manifests: list[dict[str, Any]],
) -> None:
    conf = find(manifests, "ConfigMap", "zmq-nginx")["data"]["nginx.conf"]
    service = find(manifests, "Service", "zmq-server")["metadata"]
    assert_same_stream_logic(conf, f"{service['name']}.{service['namespace']}.svc.{CLUSTER_DOMAIN}")


def test_stream_logic_check_notices_a_difference(manifests: list[dict[str, Any]]) -> None:
    conf = find(manifests, "ConfigMap", "zmq-nginx")["data"]["nginx.conf"]
    host = f"zmq-server.{NAMESPACE}.svc.{CLUSTER_DOMAIN}"
    changed = re.sub(r"proxy_timeout\s+\S+;", "proxy_timeout 5m;", conf)
    assert changed != conf
    with pytest.raises(AssertionError):
        assert_same_stream_logic(changed, host)
    with pytest.raises(AssertionError):
        assert_same_stream_logic(conf, f"zmq-server.elsewhere.svc.{CLUSTER_DOMAIN}")


def test_nginx_directives_reads_blocks_quotes_and_comments() -> None:
    text = """
    # comment; with { braces }
    events { worker_connections 10; }
    stream {
        log_format x '$a [$b] '
                     "q;{}";
        server { listen 1; }
    }
    """
    assert nginx_directives(text) == [
        Directive("", "events", ()),
        Directive("events", "worker_connections", ("10",)),
        Directive("", "stream", ()),
        Directive("stream", "log_format", ("x", "$a [$b] ", "q;{}")),
        Directive("stream", "server", ()),
        Directive("stream/server", "listen", ("1",)),
    ]
    with pytest.raises(ValueError, match="unterminated"):
        nginx_directives("stream { server {")


@pytest.mark.nginx
@needs_nginx
def test_configmap_nginx_conf_passes_nginx_t(
    manifests: list[dict[str, Any]], tmp_path: Path
) -> None:
    conf = find(manifests, "ConfigMap", "zmq-nginx")["data"]["nginx.conf"]
    checked = nginx_check(conf, tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert "test is successful" in checked.stderr
