"""A call weighs on the CPU as one process of the supervisor's niceness, however many it forks.

v1 (this machine, root): the cpu slots sit beside the supervisor, not inside a group that would make
all slots together weigh as one process. v2: the writes a delegated hierarchy gets, against the fake
tree of ``fake_cgroupfs``. The fairness figure itself is measured by ``benchmarks/sandbox_fairness.py``."""
import os

import pytest

from tirl.sandbox.cgroups import CgroupSlots, RealFS, slot_weight, v2_weight

from fake_cgroupfs import FakeCgroup2


def test_weights_follow_the_kernels_nice_table():
    # sched_prio_to_weight: nice -5 -> 3121, 0 -> 1024, 10 -> 110, 19 -> 15; cpu.weight 100 is 1024.
    assert [slot_weight(n) for n in (-5, 0, 10)] == [3125, 1024, 110]
    assert abs(slot_weight(19) - 15) <= 1
    assert [v2_weight(w) for w in (1024, 110, 15, 10**6)] == [100, 11, 1, 10_000]


def test_v2_every_slot_and_the_supervisor_weigh_one_process_and_their_group_all_of_them():
    fs = FakeCgroup2()
    slots, why = CgroupSlots.create(3, 256 << 20, 64, cpu_quota=0.5, fs=fs)
    assert slots is not None and slots.version == "v2" and slots.has_cpu, why
    base, one = slots.bases[""], v2_weight(slot_weight())
    for i in range(3):
        assert fs.read(f"{base}/s{i}/cpu.weight") == str(one)
        assert fs.read(f"{base}/s{i}/cpu.max") == "50000 100000"
    assert fs.exists(f"{base}/supervisor")  # the trainer is a fourth child of the group
    assert fs.read(f"{base}/cpu.weight") == str(v2_weight(slot_weight() * 4))
    slots.close()


def test_v2_without_the_cpu_controller_says_so():
    slots, _ = CgroupSlots.create(2, 256 << 20, 64, fs=FakeCgroup2(avail=("memory", "pids")))
    assert slots is not None and not slots.has_cpu
    assert not any(p.endswith("cpu.weight") for p in slots.fs.values)
    slots.close()


def test_v1_cpu_slots_sit_beside_the_supervisor(sb):
    cg = sb._sup.cg
    if cg is None or cg.version != "v1" or not cg.has_cpu:
        pytest.skip("needs a writable v1 cpu hierarchy (root on this machine)")
    own = os.path.join(RealFS.root, "cpu") + RealFS().own_cgroups()["cpu"]
    cpu_dirs = [d for d in cg.slot_dirs() if d.startswith(os.path.join(RealFS.root, "cpu") + "/")]
    assert len(cpu_dirs) == sb._sup.n_slots
    for d in cpu_dirs:
        assert os.path.realpath(os.path.dirname(d)) == os.path.realpath(own)
        assert int(open(os.path.join(d, "cpu.shares")).read()) == slot_weight()
    line = [ln for ln in sb.run("print(open('/proc/self/cgroup').read())").stdout.splitlines()
            if ln.split(":")[1:2] == ["cpu"]][0]
    assert line.endswith("/" + os.path.basename(cpu_dirs[0])) or line.endswith("/" + os.path.basename(cpu_dirs[1]))
    assert "NOT ENFORCED" not in sb.isolation["limits"]["cpu_share"]
