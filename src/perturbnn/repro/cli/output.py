"""What the command line writes, and how it reports bad input.

* :func:`echo`: one line to stdout (or stderr), looked up at call time so that redirections
  and test captures see it.
* :class:`Parser`: an ``argparse.ArgumentParser`` whose errors are one line (``prog: error:
  ...``) instead of the usage block, that answers an unknown flag with a "did you mean", that
  takes no abbreviated flags, and whose ``--help`` shows each default once.
* :func:`add_alias`: a hidden second spelling of a flag (the independent reproduction's
  ``--first_filter_size`` for ``--first-filter-size``), accepted but not shown in ``--help``.
* :func:`choice`: an argparse ``type`` for a flag with a fixed set of names; a bad name is
  answered with the valid names and a "did you mean".
* :func:`name_flags`: rewrites an error message of the library (which names the
  :class:`~perturbnn.repro.config.RunConfig` field, ``test_subset``) with the flag the user
  typed (``--test-subset``), as :func:`flag_names` finds it.
* :func:`plural`: ``1 epoch``, ``2 epochs``.
* :func:`add_progress_flag`: ``--progress/--no-progress``, the same on every command.
* :func:`threads_arg`: the ``type`` of ``--threads`` (a positive int); :func:`add_threads_flag`
  adds it and ``--threads-from`` (mutually exclusive), the same on every command.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Callable, NoReturn, Optional

from perturbnn._suggest import did_you_mean

__all__ = [
    "PROGRESS_HELP",
    "REPLAY_ONE_RUN",
    "HelpFormatter",
    "Parser",
    "add_alias",
    "add_progress_flag",
    "add_threads_flag",
    "choice",
    "echo",
    "flag_names",
    "name_flags",
    "plural",
    "threads_arg",
]


def echo(text: str = "", *, err: bool = False) -> None:
    """Write ``text`` and a newline to stdout (``err``: stderr) and flush."""
    stream = sys.stderr if err else sys.stdout
    stream.write(f"{text}\n")
    stream.flush()


def plural(count: int, word: str) -> str:
    """``"1 epoch"``, ``"2 epochs"`` (``word`` is the singular; an ``s`` is added)."""
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds ``(default: ...)`` to a flag's help unless the help already states its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default:" in text or "%(default)" in text:
            return text
        return super()._get_help_string(action) or text


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line: ``prog: error: message (see --help)``.

    An unknown flag is answered with the close flags shown in ``--help``
    (``unrecognized arguments: --first-filter 3; did you mean --first-filter-size?``, by
    :func:`perturbnn._suggest.close_matches`), or with none when nothing is close. Flags are
    not abbreviated (``allow_abbrev=False``): ``--first-filter`` is not taken for
    ``--first-filter-size`` silently, and a new flag cannot change what an old command line means.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")

    def shown_flags(self) -> list[str]:
        """Every flag that ``--help`` shows (hidden aliases left out), in its order."""
        return [
            flag
            for action in self._actions
            if action.help is not argparse.SUPPRESS
            for flag in action.option_strings
        ]

    def parse_args(  # type: ignore[override]
        self, args: Optional[Sequence[str]] = None, namespace: Optional[argparse.Namespace] = None
    ) -> argparse.Namespace:
        """``argparse.ArgumentParser.parse_args``, with a "did you mean" for unknown flags."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            typed = [  # the flags among them, not the values or a lone "-"
                extra.split("=", 1)[0]
                for extra in extras
                if extra[:1] in self.prefix_chars and extra not in self.prefix_chars
            ]
            hints = []
            for flag in typed:
                hint = did_you_mean(flag, self.shown_flags(), quote=False)
                if hint:
                    hints.append(hint if len(typed) == 1 else f"{flag}: {hint}")
            hint = "".join(f"; {h}" for h in hints)
            self.error(f"unrecognized arguments: {' '.join(extras)}{hint}")
        return parsed


def add_alias(parser: argparse.ArgumentParser, alias: str, *flags: str, **kwargs: Any) -> None:
    """Add ``flags`` with ``kwargs`` (``parser.add_argument``), and ``alias`` as a hidden second
    spelling: the same destination, accepted, not shown in ``--help`` and never suggested.

    With ``action=argparse.BooleanOptionalAction`` the alias gets its ``--no-`` form too
    (``--unique_masks`` and ``--no-unique_masks``). The alias sets nothing unless typed (its
    default is ``argparse.SUPPRESS``), so the flag's default stands.

    Args:
        parser: the parser.
        alias: the hidden spelling, e.g. ``"--first_filter_size"``.
        *flags: the shown spellings, e.g. ``"--first-filter-size"``.
        **kwargs: ``add_argument``'s keyword arguments for the shown flag.
    """
    action = parser.add_argument(*flags, **kwargs)
    hidden = {k: v for k, v in kwargs.items() if k not in ("help", "default", "dest")}
    parser.add_argument(
        alias, dest=action.dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **hidden
    )


def choice(names: Iterable[str], *, what: str = "name") -> Callable[[str], str]:
    """An argparse ``type`` accepting one of ``names``.

    Args:
        names: the valid names.
        what: what a name is, for the message (``"model name"``).

    Returns:
        A function that returns its argument when valid and otherwise raises
        ``argparse.ArgumentTypeError`` with the valid names and up to three close matches;
        argparse prefixes the flag (``argument --net-type: unknown model name 'resnet99'; ...``).
    """
    valid = list(names)

    def check(value: str) -> str:
        if value in valid:
            return value
        hint = did_you_mean(value, valid)
        hint = f"; {hint}" if hint else ""
        raise argparse.ArgumentTypeError(
            f"unknown {what} {value!r}{hint} (valid: {', '.join(valid)})"
        )

    check.__name__ = what.replace(" ", "_")  # argparse names the type in some messages
    return check


def threads_arg(text: str) -> int:
    """The argparse ``type`` of ``--threads``: a positive int (argparse names the flag)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive int, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive int, got {text!r}")
    return value


#: ``--threads-from``'s help on ``demo`` and ``train``: what PATH is.
REPLAY_ONE_RUN = "the summary.json of an earlier run of the same configuration, or its run folder"


def add_threads_flag(
    parser: argparse.ArgumentParser,
    *,
    default: Any = None,
    replay_source: str = REPLAY_ONE_RUN,
) -> None:
    """Add ``--threads N`` and ``--threads-from PATH``, mutually exclusive, as every command
    (``demo``, ``train``, ``reproduce``) has them.

    Args:
        parser: the parser.
        default: both flags' default (``argparse.SUPPRESS`` to set only explicit flags).
        replay_source: what ``PATH`` is, for the help.
    """
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--threads",
        type=threads_arg,
        default=default,
        metavar="N",
        help="CPU threads (default: $OMP_NUM_THREADS if set, else the CPUs this process may "
        "use, fewer while other processes keep them busy; the counts used are recorded)",
    )
    group.add_argument(
        "--threads-from",
        default=default,
        metavar="PATH",
        help=f"replay the thread counts recorded by an earlier run, step by step, to regenerate "
        f"its numbers exactly (the count changes the rounding); PATH: {replay_source} "
        "(default: none)",
    )


#: ``--progress``'s help, the same on every command (``demo`` spells it out in its parser).
PROGRESS_HELP = (
    "tqdm progress bars on stderr, drawn only when it is a terminal (they never change the "
    "numbers)"
)


def add_progress_flag(parser: argparse.ArgumentParser, *, default: Any = True) -> None:
    """Add ``--progress/--no-progress`` (bars on by default, drawn on a terminal only), as
    every command (``demo``, ``train``, ``reproduce``) has it.

    Args:
        parser: the parser.
        default: ``True``, or ``argparse.SUPPRESS`` to set it only when typed.
    """
    parser.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=default, help=PROGRESS_HELP
    )


def add_data_flags(
    parser: argparse.ArgumentParser, *, holding: str, suppress_defaults: bool = False
) -> None:
    """Add ``--data-dir`` and ``--download``, the same on every command.

    Args:
        parser: the parser.
        holding: what the folder holds, for the help (``"cifar10/ or cifar-10-batches-py/"``).
        suppress_defaults: set them only when typed (``train``'s preset resolution).
    """

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress_defaults else value

    parser.add_argument(
        "--data-dir",
        default=default(None),
        help=f"folder holding {holding} (default: $PERTURBNN_DATA_DIR, else ./data or "
        "../shared/data, the first that exists; with --download: $PERTURBNN_DATA_DIR, else "
        "./data)",
    )
    parser.add_argument(
        "--download",
        default=default(False),
        action="store_true",
        help="download the data set with torchvision into --data-dir if it is not there (CIFAR-10: "
        "about 170 MB; never again once there; not for ImageFolder)",
    )


def flag_names(
    parser: argparse.ArgumentParser, typed: Optional[Sequence[str]] = None
) -> dict[str, str]:
    """``{dest: flag}`` for every optional argument of ``parser`` (``test_subset``:
    ``--test-subset``).

    Args:
        parser: the parser.
        typed: the command line; a flag found there is the one named (the last spelling typed
            of each destination: ``--first_filter_size`` if the user typed that alias).

    Returns:
        dict[str, str]: for each destination, the spelling typed, else the first spelling
        ``--help`` shows (``--unique-masks``, not ``--no-unique-masks``).
    """
    flags: dict[str, str] = {}
    for action in parser._actions:
        shown = action.option_strings and action.help is not argparse.SUPPRESS
        if shown and action.dest != "help":
            flags.setdefault(action.dest, action.option_strings[0])
    for arg in typed or ():
        flag = arg.split("=", 1)[0]
        found = parser._option_string_actions.get(flag)
        if found is not None and found.dest in flags:
            flags[found.dest] = flag
    return flags


def name_flags(message: str, flags: Mapping[str, str]) -> str:
    """``message`` with the field names it mentions replaced by the flags the user typed.

    A field with an underscore (``test_subset``) is replaced wherever it appears as a word; a
    one-word field (``dropout``, ``device``) only where it names the value (at the start of the
    message or before ``must``), so that prose such as "a device that is not available" stays.
    A name already written as a flag is left alone, and ``download=True`` (a field set to
    ``True``, as the library's messages write it) becomes the flag (``--download``).

    Args:
        message: an error message of the library.
        flags: ``{field: flag}``, as :func:`flag_names` returns.

    Returns:
        str: the message, for instance ``--test-subset must be in 1..10000 ..., got 100000``.
    """
    for field in sorted(flags, key=len, reverse=True):
        flag = flags[field]
        message = re.sub(rf"(?<![\w-]){re.escape(field)}=True\b", flag, message)
        if "_" in field:
            pattern = rf"(?<![\w-]){re.escape(field)}(?!\w)"
        else:
            pattern = rf"(?:^{re.escape(field)}(?=\s)|(?<=\s){re.escape(field)}(?= must\b))"
        message = re.sub(pattern, flag, message)
    return message
