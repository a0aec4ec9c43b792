"""What the three command lines (model.train, model.predict, model.fitconv) share.

    parser = Parser(prog="python -m model.x", description="...")
    parser.add_argument("--epochs", type=positive_int, default=3, help="passes over the data")
    # --help: "--epochs EPOCHS  passes over the data (default: 3)"
    # python -m model.x --epochs 0: "python -m model.x: error: argument --epochs: must be a
    #                                positive integer, got 0 (see --help)"

Errors are one line (argparse would print the usage first). Every option's help states its
default: HelpFormatter appends "(default: X)", "(default: off)" for flags or "(required)", unless
the help text already says it; an option whose default is None must explain that in words.
"""

from __future__ import annotations

import argparse

from . import checks


class HelpFormatter(argparse.HelpFormatter):
    """Adds the default (or "required") to each option's help, once."""

    def _get_help_string(self, action):
        text = action.help or ""
        if not action.option_strings or action.default is argparse.SUPPRESS:
            return text
        if action.required:
            return text if "required" in text else f"{text} (required)"
        if "default" in text or action.default is None:
            return text
        if action.nargs == 0 and action.default is False:  # store_true
            return f"{text} (default: off)"
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors and HelpFormatter; subparsers are Parsers too."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")

    def add_subparsers(self, **kwargs):
        kwargs.setdefault("parser_class", Parser)
        return super().add_subparsers(**kwargs)


def fail(parser: argparse.ArgumentParser, message) -> None:
    """Exit with status 2 and one line "<prog>: error: <message>" (for errors after parsing)."""
    parser.exit(2, f"{parser.prog}: error: {message}\n")


def _option_type(convert, check, kind: str):
    """An argparse `type`: convert the text, then check the value with model.checks."""

    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {kind}, got {text!r}") from None
        try:
            return check(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = kind
    return parse


positive_int = _option_type(int, checks.positive_int, checks.POSITIVE_INT)
nonnegative_int = _option_type(int, checks.nonnegative_int, checks.NONNEGATIVE_INT)
positive_float = _option_type(float, checks.positive_float, checks.POSITIVE_NUMBER)
nonnegative_float = _option_type(float, checks.nonnegative_float, checks.NONNEGATIVE_NUMBER)
