"""reqrep.cli: bounded argparse types, settings whose default and variable come from
reqrep.config, log levels in any case, endpoints checked, and help that shows a default once."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import pytest

from reqrep import cli
from reqrep.config import setting
from tests.support import usage_error


@pytest.mark.parametrize(
    ("parse", "text", "value"),
    [
        (cli.int_at_least(1), "5", 5),
        (cli.int_at_least(-1), "-1", -1),
        (cli.float_at_least(0), "0.5", 0.5),
        (cli.int_list_at_least(1), "1,16, 64", [1, 16, 64]),
        (cli.port_number, "0", 0),
        (cli.optional(cli.port_number), "", None),
        (cli.log_level, "debug", "DEBUG"),
        (cli.log_level, "Warn", "WARNING"),
        (cli.endpoint(bind=True), "tcp://*:5555", "tcp://*:5555"),
    ],
)
def test_types_accept_values_in_range(parse: object, text: str, value: object) -> None:
    assert parse(text) == value  # type: ignore[operator]


@pytest.mark.parametrize(
    ("parse", "text", "complaint"),
    [
        (cli.int_at_least(1), "0", "must be at least 1"),
        (cli.int_at_least(0), "1.5", "not an integer"),
        (cli.float_at_least(0), "-0.1", "must be at least 0"),
        (cli.float_at_least(0), "nan", "must be at least 0"),
        (cli.float_at_least(0), "soon", "not a number"),
        (cli.int_list_at_least(1), "1,0", "must be at least 1"),
        (cli.int_list_at_least(1), "1,x", "not an integer"),
        (cli.int_list_at_least(1), ",", "at least one value"),
        (cli.port_number, "65536", "not a TCP port"),
        (cli.log_level, "loud", "not a log level"),
        (cli.endpoint(bind=False), "notanendpoint", "is not an endpoint"),
        (cli.endpoint(bind=False), "tcp://localhost", "has no port"),
    ],
)
def test_types_refuse_out_of_range_and_malformed_values(
    parse: object, text: str, complaint: str
) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=complaint):
        parse(text)  # type: ignore[operator]


@dataclass(frozen=True)
class Example:
    count: int = setting(3, env="EXAMPLE_COUNT")
    items: tuple[str, ...] = setting(("a", "b"), env="EXAMPLE_ITEMS")
    port: int | None = setting(None, env="EXAMPLE_PORT")


def example_parser() -> argparse.ArgumentParser:
    parser = cli.parser("example", "an example")
    cli.add_setting(parser, Example, "count", "--count", type=int, help="how many")
    cli.add_setting(parser, Example, "items", "--item", help="an item")
    cli.add_setting(
        parser, Example, "port", "--port", type=cli.optional(int), shown="off", help="p"
    )
    return parser


def test_a_setting_defaults_to_its_field_then_its_variable_then_its_flag(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("EXAMPLE_COUNT", "EXAMPLE_ITEMS", "EXAMPLE_PORT"):
        monkeypatch.delenv(name, raising=False)
    args = example_parser().parse_args([])
    assert (args.count, args.items, args.port) == (3, ["a", "b"], None)
    assert cli.config_from_args(Example, args) == Example()
    monkeypatch.setenv("EXAMPLE_COUNT", "7")
    monkeypatch.setenv("EXAMPLE_ITEMS", "x, y")
    monkeypatch.setenv("EXAMPLE_PORT", "")
    args = example_parser().parse_args([])
    assert (args.count, args.items, args.port) == (7, ["x", "y"], None)
    # A flag given on the command line wins; a repeated flag replaces the default list.
    args = example_parser().parse_args(["--count", "1", "--item", "p", "--item", "q,r"])
    assert (args.count, args.items) == (1, ["p", "q", "r"])


def test_help_names_each_variable_once_and_the_default_in_effect_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EXAMPLE_COUNT", "7")
    monkeypatch.delenv("EXAMPLE_PORT", raising=False)
    text = " ".join(example_parser().format_help().split())
    assert "(from env EXAMPLE_COUNT; default 7)" in text
    assert "(env EXAMPLE_PORT; default off)" in text
    assert "(env EXAMPLE_ITEMS; default a,b)" in text
    assert "None" not in text
    assert text.count("EXAMPLE_COUNT") == 1


def test_a_bad_value_from_the_environment_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("EXAMPLE_COUNT", "many")
    assert "'many'" in usage_error(capsys, example_parser().parse_args)


def test_given_sees_a_flag_in_both_spellings_and_no_abbreviation_is_taken() -> None:
    assert cli.given(["--connect", "tcp://a:1"], "--connect")
    assert cli.given(["--connect=tcp://a:1"], "--connect")
    assert not cli.given(["--connected"], "--connect")
    with pytest.raises(SystemExit):
        example_parser().parse_args(["--cou", "1"])


def test_forward_gives_another_process_the_same_values() -> None:
    parser = example_parser()
    actions = [a for a in parser._actions if a.dest in ("count", "items")]
    args = parser.parse_args(["--count", "4", "--item", "p", "--item", "q"])
    assert cli.forward(actions, args) == ["--count", "4", "--item", "p", "--item", "q"]
