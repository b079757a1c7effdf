"""reqrep.config: every setting has its default and its environment variable in one place, and
docs/docker.md's table of variables says the same."""

from __future__ import annotations

import re

import pytest

from reqrep.client import immediate
from reqrep.config import default, env_name
from tests.support import CONFIG_CLASSES, PROJECT_DIR, config_settings


def documented() -> dict[str, str]:
    """docs/docker.md's table: variable -> its default column."""
    text = (PROJECT_DIR / "docs" / "docker.md").read_text()
    return dict(re.findall(r"^\| `([A-Z_]+)` \| [^|]+ \| ([^|]+) \|", text, re.MULTILINE))


@pytest.mark.parametrize(("cls", "name"), config_settings(*CONFIG_CLASSES))
def test_every_setting_names_its_variable_and_the_docs_give_its_default(
    cls: type, name: str
) -> None:
    variable = env_name(cls, name)
    assert re.fullmatch(r"(SERVER|CLIENT|RUN)_[A-Z_]+", variable)
    table = documented()
    assert variable in table, f"{variable} is not in docs/docker.md's table"
    value = default(cls, name)
    if value is None or name in ("name", "address"):
        return  # "off", "the hostname": said in words
    shown = ",".join(value) if isinstance(value, tuple) else str(value)
    assert table[variable].strip() == f"`{shown}`"


def test_a_variable_means_one_thing_wherever_it_is_read() -> None:
    """A Channel's settings are a Client's, plus its own: the same variables, the same defaults."""
    by_variable: dict[str, object] = {}
    for cls, name in config_settings(*CONFIG_CLASSES):
        if name in ("name", "address"):
            continue
        value = default(cls, name)
        assert by_variable.setdefault(env_name(cls, name), value) == value


def test_immediate_is_on_only_for_several_endpoints() -> None:
    """ZMQ_IMMEDIATE skips a dead endpoint among several, and costs the replies unread when a
    connection drops (reqrep.client.immediate): on only where there is something to skip."""
    assert immediate(["tcp://nginx:5555"]) == 0
    assert immediate(["tcp://node1:5555", "tcp://node2:5555"]) == 1
