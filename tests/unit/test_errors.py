"""reqrep.errors: one base class for everything, three branches kept apart (a timeout is not a
protocol error, and a reply reporting a failure is neither)."""

from __future__ import annotations

import inspect

import pytest

import reqrep
from reqrep import errors
from reqrep.protocol import Fault, Reply


def every_exception() -> list[type[BaseException]]:
    return [
        value
        for _, value in inspect.getmembers(errors, inspect.isclass)
        if issubclass(value, BaseException) and value.__module__ == errors.__name__
    ]


def test_every_exception_of_the_package_is_a_reqrep_error_and_exported() -> None:
    found = every_exception()
    assert len(found) == len(errors.__all__)
    for exception in found:
        assert issubclass(exception, errors.ReqRepError)
        assert exception.__name__ in reqrep.__all__
        assert getattr(reqrep, exception.__name__) is exception


def test_timeouts_protocol_errors_and_failed_replies_are_apart() -> None:
    timeout = errors.RequestTimeout(["tcp://a:1"], "3", 2, "nothing came")
    protocol_error = errors.MalformedReply("x")
    failed = errors.ServerError(Reply("Server error", "r", b"ValueError: v"))
    branches = (errors.RequestTimeout, errors.ProtocolError, errors.ReplyError)
    for error, branch in zip((timeout, protocol_error, failed), branches, strict=True):
        assert [isinstance(error, b) for b in branches] == [b is branch for b in branches]
    assert isinstance(timeout, TimeoutError)
    assert isinstance(errors.EndpointError("x"), ValueError)


@pytest.mark.parametrize(
    ("label", "tries", "text"),
    [
        ("3", 4, "server at tcp://a:1 did not answer request 3 after 4 tries: why"),
        ("", 1, "server at tcp://a:1 did not answer the request after 1 try: why"),
    ],
)
def test_a_request_timeout_names_server_request_tries_and_why(
    label: str, tries: int, text: str
) -> None:
    error = errors.RequestTimeout(["tcp://a:1"], label, tries, "why")
    assert str(error) == text
    assert (error.label, error.tries, error.reason) == (label, tries, "why")


def test_reply_errors_say_status_replica_and_detail() -> None:
    reply = Reply("Server error", "replica-2", b"ValueError: no such key: 42")
    assert (
        str(errors.ServerError(reply)) == "Server error from replica-2: ValueError: no such key: 42"
    )
    assert (
        errors.MalformedRequest(Fault("empty_address", "empty address")).reason == "empty address"
    )
