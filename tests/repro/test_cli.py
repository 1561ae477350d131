"""The command line (``perturbnn-repro``, ``python -m perturbnn.repro``) as a new user meets it:
checks before output, errors naming the flag typed, one-line errors, help text, progress output
into files, and the two commands the README opens with."""

from __future__ import annotations

import io
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from perturbnn.repro import progress as progress_mod
from perturbnn.repro.cli import demo as demo_cli
from perturbnn.repro.cli import main as cli_main
from perturbnn.repro.cli import reproduce as reproduce_cli
from perturbnn.repro.cli import train as train_cli
from perturbnn.repro.cli.output import choice, flag_names, name_flags, plural
from perturbnn.repro.config import RunConfig
from perturbnn.repro.experiments import EXPERIMENTS
from perturbnn.repro.fit import fit
from perturbnn.repro.optim import make_optimizer

REPO = Path(__file__).resolve().parents[2]
DATA_DIR = Path(
    os.environ.get("PERTURBNN_DATA_DIR") or Path(__file__).resolve().parents[3] / "shared" / "data"
)
needs_cifar10 = pytest.mark.skipif(
    not ((DATA_DIR / "cifar10").is_dir() or list(DATA_DIR.glob("cifar10_*.npz"))),
    reason=f"CIFAR-10 not found in {DATA_DIR} (set PERTURBNN_DATA_DIR)",
)


@pytest.fixture
def run_train(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> Any:
    """Run ``perturbnn-repro train ARGS`` in this process; return (status, stdout, stderr)."""
    # The command sends the per-epoch log lines to stdout through a handler; in a test that
    # handler would outlive capsys' stream, and no test here trains.
    monkeypatch.setattr(train_cli, "log_to_stdout", lambda: None)

    def run(*args: str) -> tuple[int, str, str]:
        status = train_cli.main([*args, "--out-dir", str(tmp_path / "run"), "--device", "cpu"])
        out, err = capsys.readouterr()
        return status, out, err

    return run


# ------------------------------------------------------------------------ checks before output


@needs_cifar10
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--test-subset", "100000"], r"--test-subset must be in 1\.\.10000 .*got 100000"),
        (["--train-subset", "60000"], r"--train-subset must be in 1\.\.50000 .*got 60000"),
        (["--net-type", "lenet", "--dropout", "1.5"], r"--dropout must be .*got 1\.5"),
        (["--nepochs", "0"], r"--nepochs must be a positive int, got 0"),
        (["--noise_type", "gauss"], r"--noise_type must be one of .*got 'gauss'"),
    ],
)
def test_bad_input_is_one_line_naming_the_flag_and_nothing_is_printed_before(
    run_train: Any, args: list[str], expected: str, tmp_path: Path
) -> None:
    status, out, err = run_train(*args, "--data-dir", str(DATA_DIR))
    assert status == 2
    assert out == ""  # not the configuration, nor anything else
    assert len(err.strip().splitlines()) == 1, err
    assert re.search(r"^error: " + expected, err), err
    assert not (tmp_path / "run").exists()  # the refused run left no folder


def test_missing_data_is_reported_before_the_configuration(run_train: Any, tmp_path: Path) -> None:
    status, out, err = run_train("--data-dir", str(tmp_path / "nowhere"))
    assert status == 2 and out == ""
    assert "not found" in err and "--data-dir" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_device_names_the_flag(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setattr(train_cli, "log_to_stdout", lambda: None)
    argv = ["--device", "cuda:3", "--data-dir", str(tmp_path), "--out-dir", str(tmp_path / "r")]
    assert train_cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: --device 'cuda:3'")


def test_unknown_name_is_one_line_with_valid_names_and_a_guess(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        train_cli.build_parser().parse_args(["--net-type", "resnet99"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err  # no usage block
    assert "usage:" not in err
    assert "--net-type" in err and "did you mean 'resnet18'" in err
    assert "valid: cifarnet, lenet, noiseresnet101, noiseresnet152, noiseresnet18," in err
    assert "perturb_resnet50, resnet18)" in err
    for argv in (["--act", "rleu"], ["--impl", "fast"]):
        with pytest.raises(SystemExit):
            train_cli.build_parser().parse_args(argv)
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and argv[0] in err and "valid:" in err
    with pytest.raises(SystemExit):
        reproduce_cli.build_parser().parse_args(["--only", "basline"])
    err = capsys.readouterr().err
    assert "did you mean 'baseline'" in err and len(err.strip().splitlines()) == 1


def test_unknown_command_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["trian"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'trian'; did you mean 'train'?" in err
    assert len(err.strip().splitlines()) == 1
    assert cli_main(["xyz"]) == 2
    assert "did you mean" not in capsys.readouterr().err  # nothing close: no suggestion


# ------------------------------------------------------------------------ help text


def _help_entry(help_text: str, flag: str) -> str:
    """The lines of ``--help`` that describe ``flag``."""
    lines = help_text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(flag + " "))
    entry = [lines[start]]
    for line in lines[start + 1 :]:
        if line.strip().startswith("-") or not line.startswith("    "):
            break
        entry.append(line)
    return " ".join(entry)


@pytest.mark.parametrize(
    ("parser", "flag"),
    [
        (train_cli.build_parser(), "--first-filter-size"),
        (train_cli.build_parser(), "--out-dir"),
        (train_cli.build_parser(), "--data-dir"),
        (train_cli.build_parser(), "--nepochs"),
        (reproduce_cli.build_parser(), "--out-dir"),
        (reproduce_cli.build_parser(), "--data-dir"),
    ],
)
def test_help_shows_one_default_per_flag(parser: Any, flag: str) -> None:
    entry = _help_entry(parser.format_help(), flag)
    assert entry.count("default:") == 1, entry


def test_top_level_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "perturbnn-repro train" in out and "perturbnn-repro reproduce" in out
    assert "perturbnn-repro [demo]" in out


# ------------------------------------------------------------------------ error wording


def test_name_flags_rewrites_field_names_only() -> None:
    flags = flag_names(train_cli.build_parser())
    assert flags["test_subset"] == "--test-subset" and flags["noise_type"] == "--noise-type"
    assert name_flags("test_subset must be in 1..10 (x), got 11", flags).startswith(
        "--test-subset must"
    )
    assert name_flags("dropout must be in [0, 1)", flags) == "--dropout must be in [0, 1)"
    assert name_flags("device 'cuda' was requested", flags) == "--device 'cuda' was requested"
    prose = "a device that is not available at this noise level"
    assert name_flags(prose, flags) == prose
    assert name_flags("--test-subset must be", flags) == "--test-subset must be"


def test_choice_guesses_and_lists() -> None:
    check = choice(["resnet18", "lenet"], what="model name")
    assert check("lenet") == "lenet"
    with pytest.raises(Exception, match=r"did you mean 'resnet18'\?.*valid: resnet18, lenet"):
        check("resnet19")


def test_plural() -> None:
    assert [plural(n, "epoch") for n in (0, 1, 2)] == ["0 epochs", "1 epoch", "2 epochs"]


# ------------------------------------------------------------------------ progress into files


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def _fit_with_progress(monkeypatch: pytest.MonkeyPatch, stderr: _Stream) -> None:
    pytest.importorskip("tqdm")
    monkeypatch.setattr(sys, "stderr", stderr)
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(64, 4, generator=g), torch.arange(64) % 2)
    model = nn.Linear(4, 2)
    fit(
        model,
        DataLoader(data, batch_size=4),
        DataLoader(data, batch_size=8),
        optimizer=make_optimizer("SGD", model, lr=0.1),
        epochs=2,
        device="cpu",
        progress=True,
    )


def test_no_progress_bar_into_a_file_or_pipe(monkeypatch: pytest.MonkeyPatch) -> None:
    into_file = _Stream(tty=False)
    _fit_with_progress(monkeypatch, into_file)
    assert "\r" not in into_file.getvalue()
    assert into_file.getvalue() == ""


def test_progress_bar_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    # The check above must not pass merely because no bar is ever drawn.
    terminal = _Stream(tty=True)
    _fit_with_progress(monkeypatch, terminal)
    assert "\r" in terminal.getvalue()


def test_progress_wraps_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tqdm")
    items = [1, 2, 3]
    monkeypatch.setattr(sys, "stderr", _Stream(tty=False))
    plain = progress_mod._progress(items, enabled=True, desc="x")  # one plain iterator
    assert not hasattr(plain, "set_postfix") and list(plain) == items
    monkeypatch.setattr(sys, "stderr", _Stream(tty=True))
    bar = progress_mod._progress(items, enabled=True, desc="x")
    assert hasattr(bar, "set_postfix") and list(bar) == items


# ------------------------------------------------------------------------ entry points


def test_console_script_is_declared() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["perturbnn-repro"] == "perturbnn.repro.cli:main"
    assert (
        "docs"
        in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    )


@pytest.mark.slow
def test_python_m_runs_the_command_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "perturbnn.repro", "train", "--list-experiments"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "pnn-fanout64-shared" in proc.stdout and "82.4%" in proc.stdout


@pytest.mark.parametrize("name", ["cifar10_repro.py", "reproduce.py"])
def test_examples_are_thin(name: str) -> None:
    text = (REPO / "examples" / name).read_text()
    assert len(text.splitlines()) <= 60
    assert "argparse" not in text and "add_argument" not in text


def test_readme_opens_with_the_two_commands_ci_runs() -> None:
    readme = (REPO / "README.md").read_text()
    first_block = re.search(r"```bash\n(.*?)```", readme, re.S)
    assert first_block is not None
    # Nothing but the title and one paragraph before the commands.
    assert readme.index("```bash") < readme.index("\n## ")
    install_and_run, install_and_test = first_block.group(1).strip().splitlines()
    # The main job fetches its data on a fresh machine (tests/repro/test_download.py runs it).
    assert install_and_run.endswith("python -m perturbnn.repro --download")
    assert "pip install" in install_and_run and "pip install" in install_and_test
    ci_lines = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line.strip()]
    assert ci_lines[-1] == install_and_test
    # The CPU-only install: PyTorch's CPU index first, then the package.
    cpu = re.findall(r"```bash\n(.*?)```", readme, re.S)[1].strip().splitlines()
    assert cpu[0].endswith("--index-url https://download.pytorch.org/whl/cpu")
    assert cpu[1] == install_and_run.split(" && ")[0]


def test_scale_summary_counts_epochs_grammatically() -> None:
    import dataclasses

    from perturbnn.repro.scales import SCALES

    one = dataclasses.replace(SCALES["cpu"], nepochs=1).summary_line()
    assert ", 1 epoch, " in one and "1 epochs" not in one
    assert f", {SCALES['cpu'].nepochs} epochs, " in SCALES["cpu"].summary_line()


def test_reproduce_checks_the_options_before_printing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--nepochs", "0", "--out-dir", str(tmp_path / "runs"), "--report", str(tmp_path / "r")]
    assert reproduce_cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.strip() == "error: --nepochs must be a positive int, got 0"
    assert not (tmp_path / "runs").exists()  # no manifest written


# ------------------------------------------------------------------------ flag spellings


def _kebab(arg: str) -> str:
    """``--first_filter_size`` -> ``--first-filter-size``, ``--no-unique_masks`` ->
    ``--no-unique-masks``; values unchanged."""
    return "--" + arg[2:].replace("_", "-") if arg.startswith("--") else arg


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_the_independent_reproductions_commands_parse_as_their_kebab_spelling(name: str) -> None:
    """Each preset's main.py command (the independent reproduction's eight, the authors' two)
    runs unchanged, to the same configuration as the kebab-case spelling, and that
    configuration is the preset's except the options its main.py applies without a flag
    (``Experiment.implicit``: the authors' schedule and network changes)."""
    argv = shlex.split(EXPERIMENTS[name].seed_command)[2:]  # after "python main.py"
    kebab = [_kebab(arg) for arg in argv]
    assert not any("_" in arg for arg in kebab if arg.startswith("--"))
    parser = train_cli.build_parser()
    assert vars(parser.parse_args(argv)) == vars(parser.parse_args(kebab))
    explicit = train_cli.build_parser(suppress_defaults=True)
    assert vars(explicit.parse_args(argv)) == vars(explicit.parse_args(kebab))
    old = train_cli.resolve_config([*argv, "--out-dir", "x"])
    new = train_cli.resolve_config([*kebab, "--out-dir", "x"])
    assert old == new
    implicit = EXPERIMENTS[name].implicit_options()
    assert (EXPERIMENTS[name].source == "authors") == bool(implicit)
    for key, value in implicit.items():
        assert getattr(new, key) != value, key  # really not set by the command
    new = new.replace(**implicit)
    assert new == RunConfig.from_experiment(name, out_dir="x").replace(experiment=None)


def test_old_spellings_are_hidden_and_set_the_same_field() -> None:
    parser = train_cli.build_parser()
    shown = parser.shown_flags()  # type: ignore[attr-defined]
    assert "--first-filter-size" in shown and "--no-unique-masks" in shown
    assert not [flag for flag in shown if "_" in flag]
    options = [line for line in parser.format_help().splitlines() if line.startswith("  -")]
    assert not [line for line in options if "_" in line.split()[0]], options
    for old, new, value in [
        (["--first_filter_size", "5"], ["--first-filter-size", "5"], 5),
        (["--no-unique_masks"], ["--no-unique-masks"], False),
        (["--train_masks"], ["--train-masks"], True),
        (["--noise_type", "normal"], ["--noise-type", "normal"], "normal"),
        (["--scale_noise", "2"], ["--scale-noise", "2"], 2.0),
    ]:
        assert vars(parser.parse_args(old)) == vars(parser.parse_args(new))
        dest = new[0][2:].replace("-", "_").removeprefix("no_")
        assert getattr(parser.parse_args(old), dest) == value
    # an alias does not set its field unless typed: the default stands
    assert train_cli.build_parser().parse_args([]).unique_masks is True
    assert "unique_masks" not in vars(train_cli.build_parser(suppress_defaults=True).parse_args([]))


def test_flag_names_name_the_flag_typed_or_the_kebab_spelling() -> None:
    parser = train_cli.build_parser()
    assert flag_names(parser)["unique_masks"] == "--unique-masks"  # not --no-unique-masks
    assert flag_names(parser)["first_filter_size"] == "--first-filter-size"
    typed = flag_names(parser, ["--first_filter_size", "4", "--noise-type=x"])
    assert typed["first_filter_size"] == "--first_filter_size"
    assert typed["noise_type"] == "--noise-type"
    message = "first_filter_size must be 0 (perturbation layer) or an odd kernel size, got 4"
    assert name_flags(message, typed).startswith("--first_filter_size must be 0")


@pytest.mark.parametrize("typed", ["--noise_type", "--noise-type"])
def test_a_bad_value_is_reported_under_the_flag_typed(run_train: Any, typed: str) -> None:
    status, out, err = run_train(typed, "gauss", "--data-dir", str(DATA_DIR))
    assert status == 2 and out == ""
    assert err.startswith(f"error: {typed} must be one of ['normal', 'uniform'], got 'gauss'")


def _parsers() -> dict[str, Any]:
    return {
        "demo": demo_cli.build_parser(),
        "train": train_cli.build_parser(),
        "reproduce": reproduce_cli.build_parser(),
    }


@pytest.mark.parametrize("command", ["demo", "train", "reproduce"])
def test_progress_and_no_progress_on_every_command(command: str) -> None:
    parser = _parsers()[command]
    assert parser.parse_args([]).progress is True  # bars by default, on a terminal only
    assert parser.parse_args(["--no-progress"]).progress is False
    assert parser.parse_args(["--progress"]).progress is True
    assert "--progress, --no-progress" in parser.format_help()


@pytest.mark.parametrize("command", ["demo", "train", "reproduce"])
def test_unknown_flag_gets_a_guess_or_none(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = _parsers()[command]

    def error(*argv: str) -> str:
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args(list(argv))
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "usage:" not in err, err
        return err

    assert "did you mean --progress?" in error("--progres")
    assert "did you mean --data-dir?" in error("--data_dir", "x")
    assert "did you mean --no-progress?" in error("--no-progres")
    nonsense = error("--colour", "red")
    assert "unrecognized arguments: --colour red" in nonsense and "did you mean" not in nonsense
    # not abbreviated: an unfinished flag is an error with a guess, not taken silently
    assert "did you mean --threads or --threads-from?" in error("--thread", "2")


def test_unknown_train_flag_suggests_the_kebab_spelling(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, guess in [
        (["--first-filter", "3"], "--first-filter-size"),
        (["--first_filter", "3"], "--first-filter-size"),  # the shown spelling, not the alias
        (["--nepoch", "3"], "--nepochs"),
        (["--unique-mask"], "--unique-masks"),
    ]:
        with pytest.raises(SystemExit):
            train_cli.build_parser().parse_args(argv)
        err = capsys.readouterr().err
        assert f"unrecognized arguments: {' '.join(argv)}; did you mean {guess}" in err, err
    with pytest.raises(SystemExit):
        train_cli.build_parser().parse_args(["--first-filter=3", "--nepoch", "2"])
    err = capsys.readouterr().err
    assert "--first-filter: did you mean --first-filter-size?" in err
    assert "--nepoch: did you mean --nepochs?" in err


def test_unknown_experiment_is_suggested_only_when_close(run_train: Any) -> None:
    status, out, err = run_train("--experiment", "pnn-nonexistent", "--data-dir", str(DATA_DIR))
    assert status == 2 and out == ""
    assert "unknown experiment 'pnn-nonexistent'" in err and "Did you mean" not in err
    status, out, err = run_train("--experiment", "basline", "--data-dir", str(DATA_DIR))
    assert status == 2 and "Did you mean 'baseline'?" in err
