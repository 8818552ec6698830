"""What ``sdserve ... --help`` tells a person, and the options of the whole program."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sdserve.cli import build_parser
from sdserve.domain.schedulers import scheduler_names

#: every command a person can run, as typed after ``sdserve`` (with its required arguments)
COMMANDS: dict[str, list[str]] = {
    "generate": ["generate", "a fox", "--model", "sdserve/tiny-sd"],
    "serve": ["serve", "--demo"],
    "worker": ["worker", "--demo"],
    "train": ["train", "dogs.zip", "--model", "sdserve/tiny-sd", "--destination", "me/dog"],
    "models tiny": ["models", "tiny", "./tiny"],
    "models tiny-lora": ["models", "tiny-lora", "l.safetensors", "--base", "./tiny"],
    "models info": ["models", "info", "sdserve/tiny-sd"],
    "bench": ["bench"],
}


def _parsers(parser: argparse.ArgumentParser, path: str = "") -> Iterator[tuple[str, Any]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{path} {name}".strip())


def _help_text(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The help of one option exactly as ``--help`` prints it (before line wrapping)."""
    return parser._get_formatter()._expand_help(action)


@pytest.mark.parametrize("command", ["generate", "serve", "worker", "train", "models"])
def test_every_option_says_its_default_and_lists_its_choices(command: str) -> None:
    for path, parser in _parsers(build_parser()):
        if not path.startswith(command):
            continue
        shown = parser.format_help()
        for action in parser._actions:
            if not action.option_strings or action.dest == "help":
                continue
            if isinstance(action, argparse._SubParsersAction):
                continue
            text = _help_text(parser, action)
            where = f"sdserve {path} {action.option_strings[-1]}"
            assert text.strip(), f"{where} has no help"
            if not action.required:
                assert "(default: " in text, f"{where}: {text}"
                assert "(default: None)" not in text, where
            for choice in action.choices or ():
                assert str(choice) in shown, f"{where} does not list {choice}"


def test_scheduler_help_lists_every_name_the_engine_accepts() -> None:
    generate = dict(_parsers(build_parser()))["generate"]
    scheduler = next(a for a in generate._actions if "--scheduler" in a.option_strings)
    text = _help_text(generate, scheduler)
    for name in scheduler_names():
        assert name in text
    assert "(default: K_EULER)" in text


def test_help_shows_the_settings_defaults() -> None:
    serve = dict(_parsers(build_parser()))["serve"].format_help()
    assert "(default: 127.0.0.1)" in serve and "(default: 8000)" in serve
    assert "(default: local://)" in serve


def test_help_is_quick_and_never_imports_torch() -> None:
    code = (
        "import sys\n"
        "from sdserve.cli import main\n"
        "for argv in (['--help'], ['generate', '--help'], ['serve', '--help'],\n"
        "             ['train', '--help'], ['models', 'info', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print('heavy:', [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.splitlines()[-1] == "heavy: []"
    assert "usage: sdserve generate" in done.stdout


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_data_dir_is_accepted_before_and_after_the_command(command: str, tmp_path: Path) -> None:
    argv, parser = COMMANDS[command], build_parser()
    before = parser.parse_args(["--data-dir", str(tmp_path), *argv])
    after = parser.parse_args([*argv, "--data-dir", str(tmp_path)])
    neither = parser.parse_args(argv)
    assert before.data_dir == after.data_dir == tmp_path
    assert neither.data_dir is None  # the settings' default applies
    # the other options parse the same whichever side --data-dir is on
    assert vars(before) == vars(after)


def test_every_global_option_works_after_every_command() -> None:
    top = build_parser()
    global_options = {
        option
        for action in top._actions
        if action.option_strings and action.dest != "help"
        for option in action.option_strings
    }
    assert global_options == {"--data-dir"}  # add the new one to COMMANDS' checks above
    for path, parser in _parsers(top):
        if path and path != "models":
            taken = {option for action in parser._actions for option in action.option_strings}
            assert global_options <= taken, f"sdserve {path} lacks {global_options - taken}"
