"""Reproduce one PNN CIFAR-10 experiment, reporting the exact and the original-method accuracy.

A thin caller of the package's command line: the same as ``perturbnn-repro train`` (see
:mod:`perturbnn.repro.cli.train` for every flag, or run with ``--help``). It takes Klachko's
``main.py`` flags (same spelling, same defaults), optionally one of the ten presets (the
independent reproduction's eight, the authors' updated recipe's two; ``--experiment``); flags
given explicitly override the preset.

Examples (from the repository root; the data is found in ``$PERTURBNN_DATA_DIR`` or
``../shared/data`` without a flag)::

    python examples/cifar10_repro.py --list-experiments
    python examples/cifar10_repro.py --experiment pnn-fanout64-shared
    python examples/cifar10_repro.py --experiment baseline --nepochs 10 --train-subset 5000 \\
        --out-dir runs/baseline-short
    python examples/cifar10_repro.py --resume runs/baseline-short/checkpoint_last.pt --nepochs 20

Under ``torchrun`` it trains on several GPUs or nodes (``docs/distributed.md``)::

    torchrun --nproc_per_node=4 examples/cifar10_repro.py --experiment pnn-fanout64-shared

Exit status: 0 when done; 1 when the loss became NaN or infinite; 2 on bad input found before
training (one ``error:`` line naming the flag); 130 after Ctrl-C and 143 after SIGTERM, with
``checkpoint_last.pt`` holding the last completed epoch (see ``docs/robustness.md``).
"""

import sys

from perturbnn.repro.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
