"""``python -m perturbnn.repro``: the command line (:func:`perturbnn.repro.cli.main`)."""

import sys

from perturbnn.repro.cli import main

if __name__ == "__main__":
    sys.exit(main())
