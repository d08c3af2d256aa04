"""The command grammar: one command per line, never inside code blocks or quotes."""

from __future__ import annotations

import pytest

from ekka.bot.commands import USAGE, Action, Command, CommandError, parse_comment, split_words

pytestmark = pytest.mark.bot


def test_diagnose_with_every_kind_of_key():
    body = (
        "Looks broken since last week.\n/ekka diagnose model=tiny-llama good=v0.11.0 bad=main "
        'prompt="The quick \\"brown\\" fox" dtype=bfloat16 max-tokens=6 '
        "scenario=prefix-hit engine.enable_chunked_prefill=true engine.kv_cache_dtype=auto\nthanks"
    )
    [command] = parse_comment(body)
    assert isinstance(command, Command) and command.action is Action.DIAGNOSE
    assert command.options == {
        "model": "tiny-llama",
        "good": "v0.11.0",
        "bad": "main",
        "prompt": 'The quick "brown" fox',
        "dtype": "bfloat16",
        "max-tokens": 6,
        "scenario": "prefix-hit",
    }
    assert command.engine == {"enable_chunked_prefill": True, "kv_cache_dtype": "auto"}


def test_one_command_per_line_and_the_simple_ones():
    commands = parse_comment("/ekka status\r\n  /ekka help\n/ekka cancel\n/ekkafoo\n")
    assert [c.action for c in commands if isinstance(c, Command)] == [
        Action.STATUS,
        Action.HELP,
        Action.CANCEL,
    ]


@pytest.mark.parametrize(
    "body",
    [
        "```\n/ekka diagnose\n```",
        "~~~bash\n/ekka diagnose\n~~~",
        "> /ekka diagnose",
        ">> quoted twice /ekka diagnose\n> /ekka help",
        "    /ekka diagnose",
        "text `/ekka diagnose` inline",
        "```python\nx = 1\n/ekka cancel\n",  # an unclosed fence runs to the end
    ],
)
def test_commands_in_code_blocks_and_quotes_are_ignored(body):
    assert parse_comment(body) == []


def test_a_command_after_a_closed_fence_counts():
    assert [c.action for c in parse_comment("```\ncode\n```\n/ekka help")] == [Action.HELP]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("/ekka", "no command"),
        ("/ekka frobnicate", "unknown command 'frobnicate'"),
        ("/ekka status now", "takes no arguments"),
        ("/ekka diagnose colour=red", "unknown key 'colour'"),
        ("/ekka diagnose model", "'model' is not key=value"),
        ("/ekka diagnose model=", "model has no value"),
        ("/ekka diagnose dtype=float16", "dtype 'float16' is not one of float32, bfloat16"),
        ("/ekka diagnose max-tokens=-3", "not a whole number"),
        ("/ekka diagnose max-tokens=100000", "not a whole number"),
        ("/ekka diagnose good=a good=b", "good is given twice"),
        ("/ekka diagnose engine.x=1 engine.x=2", "engine.x is given twice"),
        ("/ekka diagnose engine.max-len=3", "not an engine argument's name"),
        ('/ekka diagnose prompt="open', "no closing quote"),
        ("/ekka diagnose good=$(rm${IFS}-rf)", "not a git commit"),
        ("/ekka diagnose bad=-rf", "not a git commit"),
    ],
)
def test_malformed_commands_say_what_is_wrong(line, message):
    [error] = parse_comment(line)
    assert isinstance(error, CommandError) and message in error.message, error


def test_words_never_reach_a_shell():
    # shell metacharacters are plain characters of a word
    assert split_words('a=$(x) b="; rm -rf /" c=`y`') == ["a=$(x)", "b=; rm -rf /", "c=`y`"]


def test_usage_lists_every_command():
    for action in Action:
        assert f"/ekka {action.value}" in USAGE
