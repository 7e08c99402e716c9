"""The `inception-fast` command line (inception_fast.cli): one parser with a subcommand per job, each
with its own --help naming its options; an unknown subcommand is an error that lists the known ones;
with no subcommand, or options first, the command is bench, as before subcommands; the module entry
points (`python -m inception_fast.bench`, `python -m inception_fast.train`, torchrun's) still reach
their commands. Nothing here runs a benchmark or a training: the commands' run functions are replaced
by recorders where a test would start one."""
import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from inception_fast import bench, cli, train

ROOT = Path(__file__).resolve().parents[1]

# Options each subcommand's --help must name (a sample of each, not the whole list).
OPTIONS = {
    "bench": ["--models", "--device", "--dtype", "--batch", "--rounds", "--channels-last", "--only", "--compile",
              "--json"],
    "report": ["json", "--out", "--no-chart"],
    "train": ["--model", "--data", "--img-size", "--batch-size", "--epochs", "--recipe", "--pretrained", "--amp",
              "--resume", "--out"],
    "eval": ["--checkpoint", "--data", "--model", "--img-size", "--json"],
}


def _exit_code(capsys, argv, entry=cli.main):
    with pytest.raises(SystemExit) as e:
        entry(argv)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


@pytest.fixture
def ran(monkeypatch):
    """Which run function each command line reaches, with its parsed options (nothing is run)."""
    calls = []
    for module, name in ((bench, "bench_main"), (bench, "report_main"), (train, "train_command"),
                         (train, "eval_command")):
        monkeypatch.setattr(module, name, lambda args, name=name: calls.append((name, args)) or 0)
    return calls


def test_the_commands_are_listed_in_the_top_level_help(capsys):
    code, out, _ = _exit_code(capsys, ["--help"])
    assert code == 0
    assert out.startswith("usage: inception-fast")
    for name in ("bench", "report", "train", "eval"):
        assert f"\n    {name} " in out, out
    assert [c.name for c in cli.COMMANDS][:4] == ["bench", "report", "train", "eval"]


@pytest.mark.parametrize("command", sorted(OPTIONS))
def test_each_command_has_its_own_help_naming_its_options(capsys, command):
    code, out, err = _exit_code(capsys, [command, "--help"])
    assert code == 0, err
    assert out.startswith(f"usage: inception-fast {command} ")
    for option in OPTIONS[command]:
        assert option in out, (command, option)
    others = {"bench": "--checkpoint", "report": "--models", "train": "--checkpoint", "eval": "--recipe"}
    assert others[command] not in out  # its own options only


def test_options_are_defined_once_by_the_commands_modules():
    # Each subparser holds exactly what its module's add_<name>_arguments adds (and -h).
    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for command in cli.COMMANDS:
        alone = argparse.ArgumentParser()
        getattr(__import__(command.module, fromlist=["_"]), command.add_arguments)(alone)
        want = {s for a in alone._actions for s in a.option_strings or [a.dest]}
        got = {s for a in sub.choices[command.name]._actions for s in a.option_strings or [a.dest]}
        assert got == want, command.name


def test_an_unknown_command_is_an_error_naming_the_known_ones(capsys):
    code, out, err = _exit_code(capsys, ["benchh"])
    assert code == 2 and out == ""
    assert "invalid choice: 'benchh'" in err
    assert all(f"'{name}'" in err for name in ("bench", "report", "train", "eval")), err


def test_an_unknown_option_or_a_missing_required_one_is_an_error(capsys):
    code, _, err = _exit_code(capsys, ["--bogus"])  # options first: bench's
    assert code == 2 and "unrecognized arguments: --bogus" in err
    code, _, err = _exit_code(capsys, ["eval", "--data", "x"])
    assert code == 2 and "--checkpoint" in err and "required" in err


def test_no_command_or_options_first_is_bench_as_before(ran):
    assert cli.main([]) == 0
    assert cli.main(["--models", "googlenet", "--rounds", "1"]) == 0
    assert cli.main(["bench"]) == 0
    assert [name for name, _ in ran] == ["bench_main"] * 3
    bare, options, named = (args for _, args in ran)
    assert vars(bare) == vars(named)  # `inception-fast` is `inception-fast bench`
    assert bare.models is None and bare.rounds is None and bare.command == "bench"
    assert options.models == ["googlenet"] and options.rounds == 1


def test_each_command_reaches_its_run_function(ran):
    assert cli.main(["report", "r.json", "--no-chart"]) == 0
    assert cli.main(["train", "--model", "bn_inception", "--epochs", "1"]) == 0
    assert cli.main(["eval", "--checkpoint", "c.pt", "--data", "d"]) == 0
    (r, report), (t, train_args), (e, eval_args) = ran
    assert (r, t, e) == ("report_main", "train_command", "eval_command")
    assert report.json == "r.json" and report.no_chart
    assert train_args.model == "bn_inception" and train_args.epochs == 1 and train_args.recipe == "finetune"
    assert eval_args.checkpoint == "c.pt" and eval_args.data == "d" and eval_args.amp == "off"


def test_the_module_entry_points_keep_their_defaults(ran, capsys):
    # python -m inception_fast.bench [--models ...] | report ...
    assert bench.main(["--models", "inception_v4"]) == 0
    assert bench.main(["report", "r.json"]) == 0
    # python -m inception_fast.train / torchrun -m inception_fast.train [train|eval] ...
    assert train.main(["--model", "googlenet", "--epochs", "3"]) == 0
    assert train.main(["train", "--epochs", "4"]) == 0
    assert train.main(["eval", "--checkpoint", "c.pt", "--data", "d"]) == 0
    assert [name for name, _ in ran] == ["bench_main", "report_main", "train_command", "train_command",
                                         "eval_command"]
    assert ran[0][1].models == ["inception_v4"] and ran[2][1].epochs == 3 and ran[3][1].epochs == 4
    # their --help is their default command's
    code, out, _ = _exit_code(capsys, ["--help"], bench.main)
    assert code == 0 and out.startswith("usage: inception-fast bench ")
    code, out, _ = _exit_code(capsys, ["--help"], train.main)
    assert code == 0 and out.startswith("usage: inception-fast train ")


@pytest.mark.parametrize("argv", [["-m", "inception_fast.cli", "eval", "--help"],
                                  ["-m", "inception_fast.train", "--help"]], ids=["cli", "train"])
def test_the_modules_run_as_scripts(argv):
    r = subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    command = "eval" if "eval" in argv else "train"
    assert r.stdout.startswith(f"usage: inception-fast {command} ") and "--data" in r.stdout
