"""The ``haven`` command line: argument mistakes are told by their command."""

from __future__ import annotations

import pytest

from haven import cli


@pytest.mark.parametrize(
    ("argv", "usage", "said"),
    [
        (
            ["report", "--bogus"],
            "usage: haven report",
            "haven report: error: unrecognized arguments: --bogus",
        ),
        (
            ["backup", "create", "/tmp/elsewhere.backup"],
            "usage: haven backup",
            "haven backup: error: FILE is taken by verify only; create works on "
            "--dir (got /tmp/elsewhere.backup)",
        ),
        (
            ["backup", "list", "some.backup"],
            "usage: haven backup",
            "haven backup: error: FILE is taken by verify only; list works on --dir",
        ),
        (
            ["wallet", "list", "--extra", "x"],
            "usage: haven wallet",
            "haven wallet: error: unrecognized arguments: --extra x",
        ),
    ],
    ids=["report-unknown-option", "backup-create-file", "backup-list-file", "wallet"],
)
def test_a_mistake_in_a_commands_arguments_shows_that_commands_usage(
    argv, usage, said, capsys
):
    with pytest.raises(SystemExit) as caught:
        cli.main(argv)

    err = capsys.readouterr().err
    assert caught.value.code == 2
    assert err.startswith(usage)
    assert said in err


def test_verify_still_takes_a_file():
    args = cli._parse(cli.build_parser(), ["backup", "verify", "a.backup"])

    assert (args.action, str(args.file)) == ("verify", "a.backup")
