"""The command grammar: `/ekka diagnose key=value ...`, `/ekka status`, `/ekka cancel`,
`/ekka help`, one per line of a comment.

Lines inside fenced code blocks (``` or ~~~), quoted lines (`>`) and indented code (four
spaces) are not commands. Values are `key=value` or `key="a quoted value"` (`\\"` and `\\\\`
inside quotes); nothing here ever reaches a shell. A malformed command becomes a
`CommandError` whose message says what is wrong, and the reply shows `USAGE`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

PREFIX = "/ekka"
KEYS = ("model", "good", "bad", "prompt", "dtype", "max-tokens", "scenario")
DTYPES = ("float32", "bfloat16")
MAX_LINE = 2000
REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/\-^~@{}]*$")

USAGE = """\
/ekka diagnose [model=NAME] [good=REF] [bad=REF] [prompt="TEXT"] [dtype=float32|bfloat16]
               [max-tokens=N] [scenario=NAME] [engine.KEY=VALUE ...]
    bisect the repository between good and bad and find the commit and the component
    (values left out come from the bot's configuration; scenario: one the bot configures,
    requests run before and beside the traced one)
/ekka status   the state of this issue's latest job
/ekka cancel   cancel this issue's queued or running job
/ekka help     this text"""


class Action(str, Enum):
    """What a command asks for."""

    DIAGNOSE = "diagnose"
    STATUS = "status"
    CANCEL = "cancel"
    HELP = "help"


@dataclass(frozen=True)
class Command:
    """One parsed command; `options` holds diagnose's keys (max-tokens as an int) and
    `engine` the engine.KEY arguments (values read as JSON where they parse, else text)."""

    action: Action
    text: str  # the line as written (stripped)
    options: dict[str, Any] = field(default_factory=dict)
    engine: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CommandError:
    """A line that starts with /ekka but is not a valid command."""

    text: str
    message: str


def command_lines(body: str) -> list[str]:
    """The lines of a comment that start with /ekka, outside code blocks and quotes."""
    lines: list[str] = []
    fence: str | None = None
    for raw in body.splitlines():
        stripped = raw.strip()
        marker = stripped[:3]
        if fence is None and marker in ("```", "~~~"):
            fence = marker  # an opening fence: code until the same marker closes it
            continue
        if fence is not None:
            if stripped.startswith(fence):
                fence = None
            continue
        if stripped.startswith(">") or raw.startswith(("    ", "\t")):
            continue  # quoted text or indented code
        if (
            stripped == PREFIX
            or stripped.startswith(PREFIX + " ")
            or stripped.startswith(PREFIX + "\t")
        ):
            lines.append(stripped)
    return lines


def parse_comment(body: str) -> list[Command | CommandError]:
    """Every command of a comment, in order."""
    return [parse_line(line) for line in command_lines(body)]


def parse_line(line: str) -> Command | CommandError:
    """One `/ekka ...` line."""
    if len(line) > MAX_LINE:
        return CommandError(line[:80] + "...", f"the command is longer than {MAX_LINE} characters")
    try:
        words = split_words(line[len(PREFIX) :])
    except ValueError as exc:
        return CommandError(line, str(exc))
    if not words:
        return CommandError(line, "no command after /ekka")
    name, args = words[0], words[1:]
    try:
        action = Action(name)
    except ValueError:
        names = ", ".join(a.value for a in Action)
        return CommandError(line, f"unknown command {name!r} (the commands are {names})")
    if action is not Action.DIAGNOSE:
        if args:
            return CommandError(line, f"/ekka {name} takes no arguments (got {args[0]!r})")
        return Command(action, line)
    try:
        options, engine = parse_options(args)
    except ValueError as exc:
        return CommandError(line, str(exc))
    return Command(action, line, options, engine)


def parse_options(args: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """diagnose's `key=value` words; raises ValueError saying what is wrong."""
    options: dict[str, Any] = {}
    engine: dict[str, Any] = {}
    for word in args:
        key, sep, value = word.partition("=")
        if not sep:
            raise ValueError(f"{word!r} is not key=value")
        if key in options or (key.startswith("engine.") and key[len("engine.") :] in engine):
            raise ValueError(f"{key} is given twice")
        if key.startswith("engine."):
            name = key[len("engine.") :]
            if not name.isidentifier():
                raise ValueError(
                    f"engine key {name!r} is not an engine argument's name (a Python keyword "
                    "argument: letters, digits and _)"
                )
            try:
                engine[name] = json.loads(value)
            except ValueError:
                engine[name] = value
            continue
        if key not in KEYS:
            raise ValueError(f"unknown key {key!r} (the keys are {', '.join(KEYS)}, engine.KEY)")
        if not value:
            raise ValueError(f"{key} has no value")
        if key == "dtype" and value not in DTYPES:
            raise ValueError(f"dtype {value!r} is not one of {', '.join(DTYPES)}")
        if key == "max-tokens":
            if not value.isdigit() or not 1 <= int(value) <= 512:
                raise ValueError(f"max-tokens {value!r} is not a whole number from 1 to 512")
            options[key] = int(value)
            continue
        if key in ("good", "bad") and not REF.match(value):
            raise ValueError(f"{key} {value!r} is not a git commit, branch or tag name")
        options[key] = value
    return options, engine


def split_words(text: str) -> list[str]:
    """Words separated by whitespace; a double-quoted part keeps its spaces (`prompt="a b"`).
    Raises ValueError on an unterminated quote."""
    words: list[str] = []
    current: list[str] = []
    in_word = False
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == '"':
            in_word = True
            i += 1
            while True:
                if i >= len(text):
                    raise ValueError("a quoted value has no closing quote")
                ch = text[i]
                if ch == "\\" and i + 1 < len(text) and text[i + 1] in '"\\':
                    current.append(text[i + 1])
                    i += 2
                    continue
                if ch == '"':
                    i += 1
                    break
                current.append(ch)
                i += 1
            continue
        if ch.isspace():
            if in_word:
                words.append("".join(current))
                current, in_word = [], False
        else:
            current.append(ch)
            in_word = True
        i += 1
    if in_word:
        words.append("".join(current))
    return words
