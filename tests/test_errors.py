"""One base class for the mistakes a user's input can cause (`permrl.errors`)."""

from __future__ import annotations

import pytest

from permrl.checkpoint import CheckpointError
from permrl.cli import main
from permrl.config import ConfigError
from permrl.data.sources import SourceError
from permrl.distributed import DistributedError
from permrl.errors import RunError, UserError
from permrl.export import ExportError
from permrl.permutations import PermutationFileError
from permrl.run_dir import RunError as RunErrorOfRunDir


@pytest.mark.parametrize("kind", [ConfigError, SourceError, RunError, CheckpointError,
                                  PermutationFileError, ExportError, DistributedError])
def test_every_user_facing_error_is_a_user_error(kind):
    assert issubclass(kind, UserError) and issubclass(kind, ValueError)


def test_run_error_keeps_its_old_import_path():
    assert RunErrorOfRunDir is RunError


def test_the_command_line_says_any_user_error_in_one_line(capsys, monkeypatch):
    import permrl.cli as cli

    def fails(args):
        raise DistributedError("RANK=5 is outside WORLD_SIZE=2")

    monkeypatch.setattr(cli, "cmd_config", fails)
    assert main(["config", "--show"]) == 2
    assert capsys.readouterr().err == "permrl: error: RANK=5 is outside WORLD_SIZE=2\n"
