"""The commands' tests see the defaults of the config dataclasses, whatever the machine has
set: every variable the commands read is cleared before each test (a test that sets one does
so itself, after this)."""

from __future__ import annotations

import pytest

from tests.support import command_variables


@pytest.fixture(autouse=True)
def no_command_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in command_variables():
        monkeypatch.delenv(name, raising=False)
