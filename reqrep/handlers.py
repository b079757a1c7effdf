"""Request handlers: the user's code at the center of a replica.

A handler is a callable that takes one ``reqrep.Request`` (``.address``, ``.data``,
``.replica``, ``.peer``, ``.time_left_s``) and returns the reply's body as ``bytes``,
or is an ``async def`` whose awaitable gives ``bytes``:

    def echo(request: Request) -> bytes:
        return request.data

    async def lookup(request: Request) -> bytes:
        return await database.get(request.data)

Whether a handler is awaited is decided once, when it is loaded (``prepare``), not
per request: an ``async def`` (or an object whose ``__call__`` is one) is awaited,
anything else is called. A synchronous handler runs in the event loop's thread
(quick ones) or in a thread pool (``threads``: ones that block). What a replica
does when a handler raises or runs out of time is ``reqrep.server``'s business;
this module only loads, prepares and provides the built-in ones.

``load("package.module:attr")`` is uvicorn's convention; it raises
``HandlerLoadError`` with one line naming what is wrong.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, TypeAlias, cast

from reqrep.errors import HandlerLoadError
from reqrep.protocol import Request

Handler: TypeAlias = Callable[[Request], bytes | Awaitable[bytes]]
SyncHandler: TypeAlias = Callable[[Request], bytes]
AsyncHandler: TypeAlias = Callable[[Request], Awaitable[bytes]]


def empty(request: Request) -> bytes:
    """The default handler, the seed's behaviour: ``Server response`` with an empty body."""
    return b""


def echo(request: Request) -> bytes:
    """The request's data, back."""
    return request.data


class Work:
    """An async handler that waits ``work_ms`` (simulated I/O), then answers an empty body:
    what ``--work-ms`` runs."""

    def __init__(self, work_ms: float) -> None:
        self.work_ms = work_ms
        self._work_s = work_ms / 1000

    async def __call__(self, request: Request) -> bytes:
        await asyncio.sleep(self._work_s)
        return b""

    def __repr__(self) -> str:
        return f"Work(work_ms={self.work_ms:g})"


DEFAULT: Final = "reqrep.handlers:empty"


@dataclass(frozen=True, slots=True)
class Prepared:
    """A handler with its path decided: awaited (``asynchronous``) or called."""

    handler: Handler
    asynchronous: bool
    name: str

    @property
    def is_default(self) -> bool:
        """The seed's handler, which the server answers on its fastest path."""
        return self.handler is empty


def prepare(handler: Handler, name: str | None = None) -> Prepared:
    """Decide once how ``handler`` is called; refuse what cannot be called with a request."""
    if not callable(handler):
        kind = type(handler).__name__
        raise HandlerLoadError(f"handler {name or handler!r} is not callable (its type is {kind})")
    return Prepared(handler, is_async(handler), name or describe(handler))


def is_async(handler: object) -> bool:
    """An ``async def`` function, a partial of one, or an object whose ``__call__`` is one."""
    if inspect.iscoroutinefunction(handler):
        return True
    call = getattr(handler, "__call__", None)  # noqa: B004 - the method itself is inspected
    return call is not None and inspect.iscoroutinefunction(call)


def describe(handler: object) -> str:
    """``module:qualname`` of a function or class, else its repr."""
    module = getattr(handler, "__module__", None)
    qualname = getattr(handler, "__qualname__", None)
    if module and qualname and "<" not in qualname:
        return f"{module}:{qualname}"
    return repr(handler)


def load(spec: str, app_dir: str | None = None) -> Prepared:
    """Import ``package.module:attr`` (``attr`` may be dotted) and prepare it; ``app_dir``
    is put first on ``sys.path`` to look for it in (uvicorn's ``--app-dir``).

    Raises ``HandlerLoadError`` naming what is wrong: the form, the module (when it,
    not something it imports, is missing), the attribute, or that it is not callable.
    Any other exception while importing the module is the module's own and propagates.
    """
    if app_dir is not None:
        path = os.path.abspath(app_dir)
        if path not in sys.path:
            sys.path.insert(0, path)
    module_name, _, attrs = spec.partition(":")
    if not module_name or not attrs or ":" in attrs:
        raise HandlerLoadError(f"handler {spec!r} is not of the form module:attr")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is None or not _is_prefix(error.name, module_name):
            raise  # the module exists, and something it imports is missing: its own bug
        missing = "" if error.name == module_name else f" (no module named {error.name!r})"
        raise HandlerLoadError(f"handler module {module_name!r} not found{missing}") from None
    target: object = module
    for attr in attrs.split("."):
        try:
            target = getattr(target, attr)
        except AttributeError:
            raise HandlerLoadError(
                f"handler module {module_name!r} has no attribute {attrs!r}"
            ) from None
    return prepare(cast(Handler, target), spec)  # HandlerLoadError if it is not callable


def _is_prefix(missing: str, module_name: str) -> bool:
    """``a.b`` missing while importing ``a.b.c``: the spec's own module path is wrong."""
    return module_name == missing or module_name.startswith(f"{missing}.")


def sync_call(prepared: Prepared) -> SyncHandler:
    """The handler as a plain call (for a prepared synchronous handler)."""
    if prepared.asynchronous:
        raise TypeError(f"{prepared.name} is an async handler")
    handler: SyncHandler = prepared.handler  # type: ignore[assignment]
    return handler


def async_call(prepared: Prepared) -> AsyncHandler:
    """The handler as an awaitable call (for a prepared async handler)."""
    if not prepared.asynchronous:
        raise TypeError(f"{prepared.name} is a synchronous handler")
    handler: AsyncHandler = prepared.handler  # type: ignore[assignment]
    return handler


def as_body(value: object) -> bytes:
    """A handler's return value as the reply's body; ``TypeError`` if it is not bytes-like."""
    if type(value) is bytes:
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if inspect.isawaitable(value):
        if inspect.iscoroutine(value):
            value.close()  # never awaited: close it, so Python does not warn of it later
        raise TypeError(
            "handler returned an awaitable, not bytes: make it an `async def` "
            "(a handler's path is decided when it is loaded)"
        )
    raise TypeError(f"handler returned {type(value).__name__}, not bytes")
