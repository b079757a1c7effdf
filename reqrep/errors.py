"""Every exception this package raises, under one base class: catch ``ReqRepError``.

    ReqRepError
    ├── ConfigError (also a ValueError)    something given is wrong; fix it and start again
    │   ├── EndpointError                  not a ZeroMQ endpoint (``tcp://host:port``, ...)
    │   ├── HandlerLoadError               ``--handler module:attr`` cannot be loaded
    │   └── CurveKeyError                  a CURVE key file is missing, unreadable or wrong
    ├── StartError                         a server or stack could not start
    │   ├── BindError                      its endpoint could not be bound
    │   ├── MetricsError                   its metrics endpoint could not be served
    │   └── StackError                     a process of the local stack did not start
    ├── ProtocolError                      a message that breaks the wire format
    │   ├── MalformedRequest               (server side) ``fault`` says which rule
    │   └── MalformedReply                 (client side) not three frames with a known status
    ├── ReplyError                         a well-formed reply reporting a failure: ``reply``
    │   ├── InvalidRequest                 ``Invalid message``: the request broke the rules
    │   ├── ServerError                    ``Server error``: the server's handler raised
    │   └── ServerTimeout                  ``Server timeout``: the handler ran out of time
    ├── RequestTimeout (also a TimeoutError)   no reply after the last try
    │   ├── ConnectFailed                  no connection was ever made (refused, no such host)
    │   └── HandshakeFailed                connected, but the handshake failed (CURVE, ZAP)
    └── ChannelClosed                      a Channel closed (or not open) with the request

A timeout is not a protocol error, and a reply that reports a failure is neither: the three
branches are kept apart so a caller can retry one, fix its request for another and page
someone for the third. The reply statuses are defined in ``reqrep.protocol``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

__all__ = [
    "BindError",
    "ChannelClosed",
    "ConfigError",
    "ConnectFailed",
    "CurveKeyError",
    "EndpointError",
    "HandlerLoadError",
    "HandshakeFailed",
    "InvalidRequest",
    "MalformedReply",
    "MalformedRequest",
    "MetricsError",
    "ProtocolError",
    "ReplyError",
    "ReqRepError",
    "RequestTimeout",
    "ServerError",
    "ServerTimeout",
    "StackError",
    "StartError",
]


class ReqRepError(Exception):
    """Base class of every exception this package raises."""


# What the exceptions keep of the protocol's objects (``reqrep.protocol.Fault`` and ``Reply``),
# named by shape so this module depends on nothing.
class FaultLike(Protocol):
    @property
    def kind(self) -> str: ...
    @property
    def reason(self) -> str: ...


class ReplyLike(Protocol):
    @property
    def status(self) -> str: ...
    @property
    def replica(self) -> str: ...
    @property
    def body(self) -> bytes: ...
    @property
    def detail(self) -> str: ...


# --- configuration ------------------------------------------------------------


class ConfigError(ReqRepError, ValueError):
    """A setting that cannot work as given."""


class EndpointError(ConfigError):
    """Not a ZeroMQ endpoint this package can bind or connect."""


class HandlerLoadError(ConfigError):
    """A handler given as ``module:attr`` that cannot be loaded; the message says why."""


class CurveKeyError(ConfigError):
    """A CURVE key file that is missing, unreadable or not the kind expected."""


# --- starting -------------------------------------------------------------------


class StartError(ReqRepError):
    """A server, or a process of the local stack, could not start."""


class BindError(StartError):
    """A server endpoint could not be bound (in use, no such interface, ...)."""


class MetricsError(StartError):
    """The metrics endpoint could not be started (e.g. its port is taken)."""


class StackError(StartError):
    """A process of the local stack (a replica, nginx) did not start."""


# --- the wire -------------------------------------------------------------------


class ProtocolError(ReqRepError):
    """A message that breaks the wire format."""


class MalformedRequest(ProtocolError):
    """A request that breaks the envelope rules; ``fault`` says which."""

    def __init__(self, fault: FaultLike) -> None:
        super().__init__(fault.reason)
        self.fault = fault
        self.reason = fault.reason


class MalformedReply(ProtocolError):
    """A reply that is not three frames with a known status."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --- replies that report a failure ------------------------------------------------


class ReplyError(ReqRepError):
    """A well-formed reply whose status is not ``Server response``; ``reply`` is all of it."""

    def __init__(self, reply: ReplyLike) -> None:
        super().__init__(f"{reply.status} from {reply.replica}: {reply.detail}")
        self.reply = reply


class InvalidRequest(ReplyError):
    """``Invalid message``: the request broke the protocol's rules (the caller's fault)."""


class ServerError(ReplyError):
    """``Server error``: the server's handler raised; the detail names the exception."""


class ServerTimeout(ReplyError):
    """``Server timeout``: the server's handler did not finish in its time."""


# --- no reply ---------------------------------------------------------------------


class RequestTimeout(ReqRepError, TimeoutError):
    """No reply after the client's last try: not a protocol error.

    ``reason`` is what ZeroMQ told the client meanwhile (its socket monitor), e.g.
    ``"connected, but nothing came back"``; the subclasses name the two cases that
    are not a slow or dead server but a setting to fix.
    """

    def __init__(self, endpoints: Sequence[str], label: str, tries: int, reason: str) -> None:
        where = ", ".join(endpoints)
        request = f"request {label}" if label else "the request"
        plural = "try" if tries == 1 else "tries"
        super().__init__(
            f"server at {where} did not answer {request} after {tries} {plural}: {reason}"
        )
        self.endpoints = tuple(endpoints)
        self.label = label
        self.tries = tries
        self.reason = reason


class ConnectFailed(RequestTimeout):
    """No connection was ever made: refused, no such host, nothing listening."""


class HandshakeFailed(RequestTimeout):
    """Connected, but the ZMTP handshake failed: CURVE keys that do not match, or a client
    key the server's ZAP handler refused, or one side using CURVE and the other not."""


class ChannelClosed(ReqRepError):
    """A ``Channel`` that is not open, or was closed while the request was pending."""
