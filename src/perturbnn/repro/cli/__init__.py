"""The command line of the reproduction: ``perturbnn-repro`` or ``python -m perturbnn.repro``.

Three commands:

* ``perturbnn-repro demo [options]`` (also what ``perturbnn-repro`` runs without a command):
  one short run of a network with perturbation layers, about 1.5 minutes on 2 quiet CPU cores,
  printing the exact accuracy against the original method's figure and how much that figure
  overstates it over many orders of the same test predictions (:mod:`perturbnn.repro.cli.demo`).
* ``perturbnn-repro reproduce [options]``: the ten experiments (the independent
  reproduction's eight, the authors' recipe's two) at one scale
  (``--scale cpu`` by default) over seeds (``1 2 3`` by default), then the report
  (:mod:`perturbnn.repro.cli.reproduce`; ``examples/reproduce.py``).
* ``perturbnn-repro train [options]``: one run with Klachko's ``main.py`` flags
  (:mod:`perturbnn.repro.cli.train`; ``examples/cifar10_repro.py``).

``perturbnn-repro COMMAND --help`` lists each command's flags.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Optional

from perturbnn._suggest import did_you_mean
from perturbnn.repro.cli import demo, reproduce, train
from perturbnn.repro.cli.output import echo

__all__ = ["main"]

PROG = "perturbnn-repro"

_USAGE = f"""usage: {PROG} [demo] [options]        one short run: exact vs original figure (default)
       {PROG} reproduce [options]     the ten experiments over seeds, and the report
       {PROG} train [options]         one run with Klachko's main.py flags

Without a command, {PROG} runs `demo`: one short CIFAR-10 run of a network with perturbation
layers (about 1.5 minutes on 2 quiet CPU cores) printing the exact test accuracy, the original
method's figure, and its overstatement over 1,000 orders of the same test predictions. The full
reproduction is `reproduce` (about 46 minutes on 2 quiet cores at its defaults). The data is looked
for in --data-dir, else $PERTURBNN_DATA_DIR, else ./data or ../shared/data (the first that
exists); --download fetches a missing data set with torchvision (into --data-dir, else
$PERTURBNN_DATA_DIR, else ./data; CIFAR-10 is about 170 MB) and never fetches it twice.

  {PROG} demo --help          the demo command's flags
  {PROG} reproduce --help     the reproduce command's flags
  {PROG} train --help         the train command's flags"""


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``perturbnn-repro``; return the exit status.

    Args:
        argv: the arguments without the program name (default: ``sys.argv[1:]``).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        echo(_USAGE)
        return 0
    if args and args[0] == "train":
        return train.main(args[1:])
    if args and args[0] == "reproduce":
        return reproduce.main(args[1:], command=f"{PROG} reproduce")
    if args and args[0] == "demo":
        args = args[1:]
    elif args and not args[0].startswith("-"):
        hint = did_you_mean(args[0], ("demo", "reproduce", "train"))
        echo(
            f"{PROG}: error: unknown command {args[0]!r}{'; ' + hint if hint else ''} (valid: "
            "demo, reproduce, train; see --help)",
            err=True,
        )
        return 2
    return demo.main(args)
