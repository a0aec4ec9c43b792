"""model.cli and model.checks: the option types, one-line errors and --help of all three CLIs."""

import argparse

import numpy as np
import pytest

from model import checks, cli, fitconv, predict, train


def parsers():
    """(name, parser) for every command line, subcommands included."""
    found = [("train", train.build_parser()), ("predict", predict.build_parser())]
    lab = fitconv.build_parser()
    found.append(("fitconv", lab))
    for action in lab._actions:
        if isinstance(action, argparse._SubParsersAction):
            found += [(f"fitconv {name}", sub) for name, sub in action.choices.items()]
    return found


@pytest.mark.parametrize("name, parser", parsers(), ids=[name for name, _ in parsers()])
def test_every_option_states_its_default_once(name, parser):
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        # the help text as --help prints it, before line wrapping
        text = parser._get_formatter()._get_help_string(action) % dict(vars(action), prog="x")
        assert "default" in text or "required" in text, (name, action.option_strings, text)
        assert text.count("default:") <= 1, (name, text)  # never "(default: ...) (default: ...)"
        assert "(default: None)" not in text, (name, text)


@pytest.mark.parametrize(
    "option_type, text, value",
    [
        (cli.positive_int, "3", 3),
        (cli.nonnegative_int, "0", 0),
        (cli.positive_float, "0.5", 0.5),
        (cli.nonnegative_float, "0", 0.0),
    ],
)
def test_option_types_accept(option_type, text, value):
    assert option_type(text) == value


@pytest.mark.parametrize(
    "option_type, text, message",
    [
        (cli.positive_int, "0", "must be a positive integer, got 0"),
        (cli.positive_int, "1.5", "must be a positive integer, got '1.5'"),
        (cli.nonnegative_int, "-1", "must be a non-negative integer, got -1"),
        (cli.positive_float, "0", "must be a number > 0, got 0.0"),
        (cli.positive_float, "nan", "must be a number > 0, got nan"),
        (cli.positive_float, "fast", "must be a number > 0, got 'fast'"),
        (cli.nonnegative_float, "-1e-9", "must be a number >= 0, got -1e-09"),
    ],
)
def test_option_types_reject_with_one_message_per_kind(option_type, text, message):
    with pytest.raises(argparse.ArgumentTypeError) as info:
        option_type(text)
    assert str(info.value) == message


def test_parser_errors_are_one_line(capsys):
    parser = cli.Parser(prog="python -m model.x")
    parser.add_argument("--epochs", type=cli.positive_int, default=3, help="passes")
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["--epochs", "0"])
    assert info.value.code == 2
    assert capsys.readouterr().err == (
        "python -m model.x: error: argument --epochs: must be a positive integer, got 0 "
        "(see --help)\n"
    )
    assert "passes (default: 3)" in " ".join(parser.format_help().split())


def test_library_checks_name_the_argument():
    assert checks.positive_int(np.int64(4), "epochs") == 4
    for check, bad in (
        (checks.positive_int, True),
        (checks.positive_int, 2.0),
        (checks.nonnegative_int, -1),
        (checks.positive_float, float("inf")),
        (checks.nonnegative_float, "1"),
    ):
        with pytest.raises(ValueError, match=r"^epochs must be "):
            check(bad, "epochs")
