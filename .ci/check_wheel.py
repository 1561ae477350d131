"""Check a built wheel: it ships py.typed and the package, and no tests, docs or benchmarks."""

from __future__ import annotations

import sys
import zipfile


def main(path: str) -> None:
    names = zipfile.ZipFile(path).namelist()
    if "perturbnn/py.typed" not in names:
        sys.exit(f"{path}: perturbnn/py.typed is missing")
    for required in ("perturbnn/__init__.py", "perturbnn/convert.py", "perturbnn/layers.py"):
        if required not in names:
            sys.exit(f"{path}: {required} is missing")
    leaked = [
        n
        for n in names
        if n.split("/")[0] in {"tests", "docs", "benchmarks", "examples"}
        or n.endswith((".jsonl", ".png", ".npz"))
    ]
    if leaked:
        sys.exit(f"{path}: holds files that belong to the source tree only: {leaked[:10]}")
    print(f"{path}: {len(names)} files, py.typed present, no tests/docs/benchmarks")


if __name__ == "__main__":
    for wheel in sys.argv[1:]:
        main(wheel)
