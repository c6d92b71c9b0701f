"""A stage's peak resident memory (`tirl.resources.stage_peak`): its own, not the process's, and an inner
stage does not hide what its outer stage reached."""

import sys

import pytest

from tirl.resources import rss_mb, stage_peak

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux's")

MB = 2**20


def _touch(mb: int) -> bytes:
    return b"x" * (mb * MB)  # written, so resident (a zeroed allocation may stay unmapped)


def test_a_stage_sees_its_own_peak_not_an_earlier_one():
    base = rss_mb()
    with stage_peak() as big:
        buf = _touch(200)
        del buf
    with stage_peak() as small:
        buf = _touch(10)
        del buf
    assert big.scope == small.scope == "stage"
    assert big.peak_rss_mb >= base + 190
    assert small.peak_rss_mb < big.peak_rss_mb - 150  # the reset forgot the first stage's 200 MB


def test_an_inner_stage_does_not_hide_the_outer_peak():
    base = rss_mb()
    with stage_peak() as outer:
        buf = _touch(200)
        del buf
        with stage_peak() as inner:
            pass
    assert inner.peak_rss_mb < base + 100
    assert outer.peak_rss_mb >= base + 190
    assert outer.as_dict()["peak_rss_mb"] == round(outer.peak_rss_mb, 1)


def test_three_nested_stages_close_in_order():
    # the demo's stage holds train_rl's, which holds an evaluation's: the two outer ones end up with the same
    # figures when the innermost opens, and must still be told apart when they close
    with stage_peak() as demo:
        with stage_peak() as train:
            with stage_peak() as evaluation:
                pass
    assert None not in (demo.peak_rss_mb, train.peak_rss_mb, evaluation.peak_rss_mb)
