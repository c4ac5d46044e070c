"""Every ``semseg`` help page: examples, a description of every argument, no docstring markup, and examples
that the parser accepts."""

from __future__ import annotations

import argparse
import re
import shlex

import pytest

from semseg.cli import build_parser

MARKUP = re.compile(r"``|:(class|func|meth|attr|mod):`")


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def example_commands(epilog: str) -> list[list[str]]:
    """The ``semseg ...`` command lines of an ``examples:`` block (continued lines joined, comments and
    anything before ``semseg`` (env variables, ``torchrun ... -m``) dropped), as argument lists."""
    block = epilog.split("examples:", 1)[1].split("\n\n", 1)[0]
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if "semseg" in words:
            commands.append(words[words.index("semseg") + 1:])
    return commands


def test_top_level_help_has_examples_and_no_markup() -> None:
    parser = build_parser()
    text = parser.format_help()
    assert not MARKUP.search(text), text
    assert parser.epilog and "examples:" in parser.epilog
    assert example_commands(parser.epilog)
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    undescribed = [choice.dest for choice in action._choices_actions if not choice.help]
    assert not undescribed, f"subcommands without a one-line help: {undescribed}"


@pytest.mark.parametrize("name", sorted(subcommands()))
def test_subcommand_help_shows_examples_and_describes_every_argument(name: str) -> None:
    parser = subcommands()[name]
    text = parser.format_help()
    assert not MARKUP.search(text), f"raw markup in `semseg {name} --help`: {MARKUP.search(text).group()}"
    assert parser.epilog and "examples:" in parser.epilog, f"`semseg {name} --help` has no examples"
    assert isinstance(parser.formatter_class, type) and issubclass(
        parser.formatter_class, argparse.RawDescriptionHelpFormatter), "examples need their line breaks kept"
    examples = example_commands(parser.epilog)
    assert examples and all(words[0] == name for words in examples), examples
    bare = [a.option_strings[0] if a.option_strings else a.dest for a in parser._actions
            if not isinstance(a, argparse._HelpAction) and (not a.help or a.help == argparse.SUPPRESS)]
    assert not bare, f"`semseg {name}` arguments without a help string: {bare}"


@pytest.mark.parametrize("name", sorted(subcommands()))
def test_examples_parse(name: str) -> None:
    parser = build_parser()
    for words in example_commands(subcommands()[name].epilog or "examples:"):
        args = parser.parse_args(words)
        assert args.command == name and callable(args.func)
