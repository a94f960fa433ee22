"""The demo's stage lines: a stage that ran says how long it took; a stage a resumed demo found
finished says "already done" rather than "(0s)"."""

from __future__ import annotations

import time

from raglign.pipeline.demo import _done, _stage


def test_a_stage_that_ran_prints_its_time(capsys):
    t = _stage(4, 7, "label training questions")
    _done(t - 12.4, "-> runs/demo/labelled")
    assert capsys.readouterr().out.splitlines() == [
        "[demo 4/7] label training questions", "           -> runs/demo/labelled (12s)"]


def test_a_resumed_stage_prints_already_done(capsys):
    _done(time.monotonic(), "-> runs/demo/labelled", resumed=True)
    assert capsys.readouterr().out == "           -> runs/demo/labelled (already done)\n"
