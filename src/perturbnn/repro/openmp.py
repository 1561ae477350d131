"""How OpenMP threads wait: the command line's ``GOMP_SPINCOUNT`` (docs/performance.md).

GNU OpenMP (``libgomp``, which torch's Linux wheels use) lets a thread that waits at the end of
a parallel region spin for ``GOMP_SPINCOUNT`` rounds (300,000 by default) before it sleeps.
Beside another busy process that spinning takes the core the late thread needs, and every
region can cost a scheduler time slice. The command line (:func:`perturbnn.repro.cli.main`)
lowers the count to :data:`SPINCOUNT` unless the user set their own; libgomp reads it only when
torch loads it, so the command line starts itself again with it (:func:`runtime_environment`).

Source: issue 12's measurements; the variables are libgomp's (GCC manual, "GOMP_SPINCOUNT").
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Optional

__all__ = [
    "RUNTIME_ENV_MARKER",
    "SPINCOUNT",
    "WAIT_ENV_VARS",
    "describe_wait_policy",
    "runtime_environment",
    "uses_libgomp",
]

#: How long (busy-wait rounds) an idle OpenMP thread of GNU OpenMP spins before it sleeps, as
#: the command line sets it: a third of libgomp's default (300,000). See
#: :func:`runtime_environment` and docs/performance.md, "Sharing the CPU".
SPINCOUNT = 100_000

#: Environment variables of GNU OpenMP's waiting that, set by the user, leave it alone.
WAIT_ENV_VARS = ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")

#: Set in the environment of the command line once it has applied :func:`runtime_environment`.
RUNTIME_ENV_MARKER = "PERTURBNN_REPRO_RUNTIME"


def uses_libgomp(maps: str = "/proc/self/maps") -> bool:
    """Whether GNU OpenMP (``libgomp``, which torch's Linux wheels use) is loaded in this process.

    Args:
        maps: the process's memory map (Linux); missing elsewhere, which gives ``False``.
    """
    try:
        with open(maps, encoding="utf-8", errors="replace") as handle:
            return "libgomp" in handle.read()
    except OSError:
        return False


def runtime_environment(
    environ: Optional[Mapping[str, str]] = None, *, libgomp: Optional[bool] = None
) -> dict[str, str]:
    """The variables the command line adds to its environment before torch is loaded.

    GNU OpenMP lets a thread that waits at the end of a parallel region spin for
    ``GOMP_SPINCOUNT`` rounds (300,000 by default) before it sleeps; beside another busy process
    that spinning takes the core the late thread needs (docs/performance.md, "Sharing the CPU").
    The command line lowers it to :data:`SPINCOUNT`, which costs nothing measurable on a quiet
    machine. libgomp reads it only when it is loaded, with torch, so the command line starts
    itself again with it (:func:`perturbnn.repro.cli.main`). Nothing is added when the user set
    ``GOMP_SPINCOUNT`` or ``OMP_WAIT_POLICY`` (theirs wins), when it was already applied
    (:data:`RUNTIME_ENV_MARKER`), or when libgomp is not in use (macOS, Windows, other builds).

    Args:
        environ: the environment (default: ``os.environ``).
        libgomp: whether libgomp is loaded (default: :func:`uses_libgomp`).

    Returns:
        dict[str, str]: the variables to add; empty when there is nothing to do.
    """
    env = os.environ if environ is None else environ
    if RUNTIME_ENV_MARKER in env or any(var in env for var in WAIT_ENV_VARS):
        return {}
    if not (uses_libgomp() if libgomp is None else libgomp):
        return {}
    return {"GOMP_SPINCOUNT": str(SPINCOUNT), RUNTIME_ENV_MARKER: "1"}


def describe_wait_policy(environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """How OpenMP threads wait in this process, for the ``threads:`` line (``None``: defaults)."""
    env = os.environ if environ is None else environ
    spin = env.get("GOMP_SPINCOUNT")
    if spin is not None and RUNTIME_ENV_MARKER in env and spin == str(SPINCOUNT):
        return f"GOMP_SPINCOUNT={spin} (set by the command line)"
    given = [f"{var}={env[var]}" for var in WAIT_ENV_VARS if var in env]
    return ", ".join(given) if given else None
