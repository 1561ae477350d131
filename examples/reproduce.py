"""Run the ten CIFAR-10 experiments (the independent reproduction's eight, the authors' two) at
one scale, then write the reproduction report.

A thin caller of the package's command line: the same as ``perturbnn-repro reproduce`` (see
:mod:`perturbnn.repro.cli.reproduce` for every flag, or run with ``--help``; the scales are in
:mod:`perturbnn.repro.scales`). Every run writes ``log.jsonl``, ``summary.json`` and
checkpoints to ``<out-dir>/<experiment>/``; the report is then built from those files alone.
An interrupted run continues where it stopped when the same command is run again.

Examples (from the repository root; the data is found in ``$PERTURBNN_DATA_DIR`` or
``../shared/data`` without a flag)::

    python examples/reproduce.py                     # --scale cpu: about 46 minutes on 2 cores
    python examples/reproduce.py --estimate
    python examples/reproduce.py --report-only --out-dir runs/reproduce
    python examples/reproduce.py --scale full --out-dir runs/full \\
        --report docs/reproduction-full.md --img-dir docs/img/full
    python examples/reproduce.py --only baseline pnn-fanout64-shared --nepochs 1 \\
        --train-subset 64 --test-subset 50 --out-dir runs/tiny --report runs/tiny/report.md \\
        --img-dir runs/tiny/img
"""

import sys

from perturbnn.repro.cli.reproduce import main

if __name__ == "__main__":
    sys.exit(main(command="python examples/reproduce.py"))
