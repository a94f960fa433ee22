"""What a raglign command shows on the terminal.

A command prints raglign's own lines (stages, results) and one progress bar per long stage;
Ray's own output goes to a log file in the job's output directory
(:func:`raglign.ray_session.ray_session`). ``raglign --verbose`` keeps Ray's output on the
terminal instead, as Ray sets it up, for when something in Ray itself needs looking at.
"""

from __future__ import annotations

import sys

from tqdm import tqdm

_verbose = False


def set_verbose(flag: bool) -> None:
    """Show Ray's logs, Ray Data's progress tables and Ray's worker output on the terminal."""
    global _verbose
    _verbose = flag


def is_verbose() -> bool:
    return _verbose


def progress_bar(total: int, desc: str, unit: str = "row") -> tqdm:
    """The bar of one long stage: count, rate and ETA. On stderr, so that stdout holds only
    lines a script can read; redrawn at most every second when stderr is a file, so that a
    log of the run stays short."""
    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, file=sys.stderr,
                mininterval=0.1 if sys.stderr.isatty() else 1.0)
