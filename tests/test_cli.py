"""The `asrkd` command: every verb exists, explains itself, and bad input is one line."""

import subprocess
import sys

import pytest

from asrkd.cli import VERBS, main


def test_top_level_help_lists_every_verb(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for verb in VERBS:
        assert verb in out


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_verb_help_documents_every_argument(verb, capsys):
    with pytest.raises(SystemExit) as e:
        main([verb, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: asrkd " + verb)
    # every option and positional in the usage has a help line under it
    from asrkd.cli import build_parser

    parser = build_parser(verb)
    sub = next(a for a in parser._actions if a.dest == "verb").choices[verb]
    for action in sub._actions:
        if action.dest != "help":
            assert action.help, f"asrkd {verb}: argument {action.dest!r} has no help text"


def test_unknown_verb_is_one_line(capsys):
    assert main(["no-such-verb"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown verb" in err


def test_console_entry_point_runs():
    r = subprocess.run([sys.executable, "-m", "asrkd", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("asrkd ")
