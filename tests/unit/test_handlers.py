"""reqrep.handlers: loading ``module:attr`` with one precise error per mistake, deciding once
whether a handler is awaited, and what a handler may return."""

from __future__ import annotations

import asyncio
import functools
import inspect
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from reqrep import handlers
from reqrep.errors import ConfigError, HandlerLoadError
from reqrep.protocol import Request

REQUEST = Request("alice", b"data")


@pytest.fixture
def on_path(tmp_path: Path) -> Iterator[Path]:
    """A directory on sys.path with handler modules of the test's making."""
    sys.path.insert(0, str(tmp_path))
    yield tmp_path
    sys.path.remove(str(tmp_path))
    for name in [n for n in sys.modules if n.startswith("userpkg") or n == "usermod"]:
        del sys.modules[name]


def test_load_finds_a_function_in_a_module_outside_the_project(on_path: Path) -> None:
    (on_path / "usermod.py").write_text(
        "def echo(request):\n    return request.data\n\n"
        "async def later(request):\n    return b'later'\n\n"
        "class Box:\n    class Inner:\n        @staticmethod\n        def answer(request):\n"
        "            return b'inner'\n"
    )
    echo = handlers.load("usermod:echo")
    assert (echo.asynchronous, echo.name) == (False, "usermod:echo")
    assert echo.handler(REQUEST) == b"data"
    assert handlers.load("usermod:later").asynchronous
    assert handlers.load("usermod:Box.Inner.answer").handler(REQUEST) == b"inner"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("usermod", "handler 'usermod' is not of the form module:attr"),
        (":echo", "handler ':echo' is not of the form module:attr"),
        ("usermod:a:b", "handler 'usermod:a:b' is not of the form module:attr"),
        ("userpkg.absent:echo", "handler module 'userpkg.absent' not found"),
        ("nosuch:echo", "handler module 'nosuch' not found"),
        ("userpkg.sub.deeper:x", "(no module named 'userpkg.sub')"),
        ("usermod:missing", "handler module 'usermod' has no attribute 'missing'"),
        ("usermod:value", "handler 'usermod:value' is not callable (its type is int)"),
    ],
)
def test_each_bad_spec_gets_one_precise_error(on_path: Path, spec: str, message: str) -> None:
    (on_path / "usermod.py").write_text("value = 3\n\ndef echo(request):\n    return b''\n")
    (on_path / "userpkg").mkdir()
    (on_path / "userpkg" / "__init__.py").write_text("")
    with pytest.raises(HandlerLoadError) as raised:
        handlers.load(spec)
    assert message in str(raised.value)
    assert isinstance(raised.value, ConfigError)


def test_a_module_whose_own_import_fails_is_not_reported_as_missing(on_path: Path) -> None:
    (on_path / "usermod.py").write_text("import not_installed_anywhere\n")
    with pytest.raises(ModuleNotFoundError, match="not_installed_anywhere"):
        handlers.load("usermod:echo")


class AsyncCallable:
    async def __call__(self, request: Request) -> bytes:
        return b"object"


async def async_function(request: Request, suffix: bytes = b"") -> bytes:
    return request.data + suffix


def test_the_path_is_decided_once_from_what_the_handler_is() -> None:
    assert handlers.is_async(async_function)
    assert handlers.is_async(functools.partial(async_function, suffix=b"!"))
    assert handlers.is_async(AsyncCallable())
    assert handlers.is_async(handlers.Work(1))
    assert not handlers.is_async(handlers.echo)
    assert not handlers.is_async(lambda request: b"")
    assert handlers.prepare(handlers.empty).is_default
    assert not handlers.prepare(handlers.echo).is_default


def test_prepare_refuses_what_cannot_be_called() -> None:
    with pytest.raises(HandlerLoadError, match="not callable"):
        handlers.prepare(b"bytes")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "body"),
    [(b"x", b"x"), (bytearray(b"ab"), b"ab"), (memoryview(b"mv"), b"mv"), (b"", b"")],
)
def test_a_handler_may_return_any_bytes_like_value(value: object, body: bytes) -> None:
    assert handlers.as_body(value) == body


def test_anything_else_is_a_type_error_naming_it() -> None:
    with pytest.raises(TypeError, match="handler returned str, not bytes"):
        handlers.as_body("text")
    with pytest.raises(TypeError, match="handler returned NoneType, not bytes"):
        handlers.as_body(None)
    coroutine = async_function(REQUEST)
    with pytest.raises(TypeError, match="make it an `async def`"):
        handlers.as_body(coroutine)
    assert (
        inspect.getcoroutinestate(coroutine) == inspect.CORO_CLOSED
    )  # closed, so Python does not warn it was never awaited


def test_the_built_in_handlers() -> None:
    assert handlers.empty(REQUEST) == b""
    assert handlers.echo(REQUEST) == b"data"
    work = handlers.Work(5)
    assert asyncio.run(work(REQUEST)) == b""
    assert repr(work) == "Work(work_ms=5)"


def test_load_looks_in_the_app_dir_first(tmp_path: Path) -> None:
    (tmp_path / "appdir_handler.py").write_text("def answer(request):\n    return b'here'\n")
    try:
        assert handlers.load("appdir_handler:answer", str(tmp_path)).handler(REQUEST) == b"here"
    finally:
        sys.path.remove(str(tmp_path))
        del sys.modules["appdir_handler"]
