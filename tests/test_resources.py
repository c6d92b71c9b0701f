"""A stage's peak resident memory (`tirl.resources.stage_peak`): its own, not the process's, and an inner
stage does not hide what its outer stage reached."""

import sys

import pytest

from tirl.resources import stage_peak

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux's")


def _in_fresh_interpreter(body: str) -> None:
    """Run `body` (asserts) in a new Python: the peak is the process's, and in a long test session other
    threads (tokenizer pools, finished runs' helpers) allocate beside the stage being measured."""
    import subprocess
    import textwrap

    prelude = ("from tirl.resources import rss_mb, stage_peak\n"
               "MB = 2**20\n"
               "def _touch(mb):\n"
               "    return b'x' * (mb * MB)  # written, so resident (a zeroed allocation may stay unmapped)\n")
    r = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(body)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]


def test_a_stage_sees_its_own_peak_not_an_earlier_one():
    _in_fresh_interpreter("""
        base = rss_mb()
        with stage_peak() as big:
            buf = _touch(200)
            del buf
        with stage_peak() as small:
            buf = _touch(10)
            del buf
        assert big.scope == small.scope == "stage"
        assert big.peak_rss_mb >= base + 190
        assert small.peak_rss_mb < big.peak_rss_mb - 150, (big, small)  # the reset forgot the first 200 MB
    """)


def test_an_inner_stage_does_not_hide_the_outer_peak():
    _in_fresh_interpreter("""
        base = rss_mb()
        with stage_peak() as outer:
            buf = _touch(200)
            del buf
            with stage_peak() as inner:
                pass
        assert inner.peak_rss_mb < base + 100
        assert outer.peak_rss_mb >= base + 190, (base, outer)
        assert outer.as_dict()["peak_rss_mb"] == round(outer.peak_rss_mb, 1)
    """)


def test_three_nested_stages_close_in_order():
    # the demo's stage holds train_rl's, which holds an evaluation's: the two outer ones end up with the same
    # figures when the innermost opens, and must still be told apart when they close
    with stage_peak() as demo:
        with stage_peak() as train:
            with stage_peak() as evaluation:
                pass
    assert None not in (demo.peak_rss_mb, train.peak_rss_mb, evaluation.peak_rss_mb)


def test_memory_freed_between_live_blocks_goes_back_to_the_system():
    """What the learner's trim is for: many small blocks freed around a few live ones stay resident (the
    allocator keeps them) until `release_free_memory` hands them back. Run in a fresh interpreter so the
    heap holds nothing else."""
    import subprocess

    code = ("from tirl.resources import rss_mb, release_free_memory\n"
            "blocks = [bytearray(b'x' * 65536) for _ in range(6000)]\n"  # ~390 MB of heap (below mmap's threshold)
            "keep = blocks[::100]\n"
            "del blocks\n"
            "held = rss_mb()\n"
            "ok = release_free_memory()\n"
            "print(held, rss_mb(), ok)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    held, after, ok = out.split()
    assert ok == "True"
    assert float(held) - float(after) > 300, out  # kept before the trim, returned by it


def test_a_loop_hands_back_only_what_has_grown_and_not_more_often_than_asked():
    """`release_if_grown`, the trainers' per-step hand-back: a loop whose freed memory stays put pays no
    page faults for it; one that climbs past `mb` is handed back (once the interval has passed)."""
    _in_fresh_interpreter("""
        import time
        from tirl.resources import release_free_memory, release_if_grown
        def fragments(n):  # ~n * 64 KB of heap freed around a few live blocks: kept by glibc until a trim
            blocks = [bytearray(b'x' * 65536) for _ in range(n)]
            return blocks[::100]
        release_free_memory()
        keep = fragments(100)  # ~6 MB: below the threshold
        assert release_if_grown(mb=64, every_s=0) is False
        keep += fragments(3000)  # ~190 MB more resident: past it
        assert release_if_grown(mb=64, every_s=60) is False  # but the last hand-back was under 60 s ago
        held = rss_mb()
        assert release_if_grown(mb=64, every_s=0) is True
        assert held - rss_mb() > 150
        assert release_if_grown(mb=64, every_s=0) is False  # nothing has grown since
    """)
