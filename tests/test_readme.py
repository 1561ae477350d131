"""Every command and snippet the README shows works as shown.

- Each ``python`` block runs as written (in a temporary folder) and prints what its comments say
  it prints (``# torch.Size([8, 10])``).
- Each ``python -m perturbnn.repro`` / ``perturbnn-repro`` / ``torchrun ... -m perturbnn.repro``
  line of a ``bash`` block parses with that command's own parser (the flags exist and their values
  are valid); the main job's first command is run for real by tests/repro/test_download.py and
  the test command by CI.
- Each ``pip install`` line names extras that pyproject.toml declares.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from perturbnn.repro.cli import demo as demo_cli
from perturbnn.repro.cli import reproduce as reproduce_cli
from perturbnn.repro.cli import train as train_cli

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, re.S)


def _commands() -> list[str]:
    """The bash lines, continuation lines joined."""
    lines: list[str] = []
    for block in _blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line:
                lines.extend(part.strip() for part in line.split("&&"))
    return lines


def _perturbnn_argv(command: str) -> list[str] | None:
    """The arguments after ``perturbnn-repro`` / ``-m perturbnn.repro``, or None."""
    words = shlex.split(command)
    if "perturbnn.repro" in words:
        return words[words.index("perturbnn.repro") + 1 :]
    if words and words[0] == "perturbnn-repro":
        return words[1:]
    return None


def test_the_readme_shows_commands_and_snippets() -> None:
    assert _blocks("python"), "no python block in the README"
    assert any(_perturbnn_argv(c) is not None for c in _commands())


@pytest.mark.parametrize(
    "command", [c for c in _commands() if _perturbnn_argv(c) is not None], ids=lambda c: c[:60]
)
def test_readme_command_parses(command: str) -> None:
    argv = _perturbnn_argv(command)
    assert argv is not None
    if argv and argv[0] == "train":
        parser = train_cli.build_parser()
        rest = argv[1:]
    elif argv and argv[0] == "reproduce":
        parser = reproduce_cli.build_parser()
        rest = argv[1:]
    else:
        parser = demo_cli.build_parser()
        rest = argv[1:] if argv and argv[0] == "demo" else argv
    with contextlib.redirect_stderr(io.StringIO()) as err:
        try:
            parser.parse_args(rest)
        except SystemExit as exc:  # argparse's way to refuse
            pytest.fail(f"{command!r} does not parse: {err.getvalue().strip()} ({exc.code})")


def test_readme_install_lines_name_declared_extras() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    extras = set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    named = {
        extra
        for command in _commands()
        if "pip install" in command
        for group in re.findall(r'"\.\[([^\]]*)\]"', command)
        for extra in group.split(",")
    }
    assert named and named <= extras, named - extras


@pytest.mark.parametrize("index", range(len(_blocks("python"))))
def test_readme_python_block_runs_and_prints_what_it_says(
    index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = _blocks("python")[index]
    expected = [m.group(1).strip() for m in re.finditer(r"print\(.*\)\s+#\s*(.+)$", source, re.M)]
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(source, f"README.md python block {index}", "exec"), {"__name__": "__readme__"})
    printed = out.getvalue().splitlines()
    for comment in expected:
        shown = comment.split(":")[0].strip()  # "torch.Size([8, 10])" or "... : explanation"
        assert any(shown in line for line in printed), (shown, printed)


def test_readme_has_no_placeholder_left() -> None:
    """An ALL_CAPS_NAME outside code (``TEST_TIME``) is a placeholder nobody filled in."""
    prose = re.sub(r"```.*?```", "", README, flags=re.S)
    prose = re.sub(r"`[^`]*`", "", prose)
    left = re.findall(r"(?<![$\w])[A-Z][A-Z0-9]*_[A-Z0-9_]+\b", prose)
    assert not left, left
