"""What a call hands back through its files descriptor is program output: junk there must neither hold
the supervisor's event loop (every neighbour's deadline runs on it) nor crash the call, and the result
says why no files came back. Input file names the sandbox cannot create are the caller's ValueError."""
import asyncio
import base64
import json
import time

import pytest

import tirl.sandbox.supervisor as supervisor_module

# The program finds the descriptor the runner writes the fetched files to, writes ``junk`` there and
# leaves before the runner adds its own JSON.
WRITE_JUNK = """import os
for f in os.listdir('/proc/self/fd'):
    try:
        if 'memfd:files' in os.readlink(f'/proc/self/fd/{f}'):
            fd = int(f)
    except OSError:
        pass  # the directory listing's own descriptor, closed by now
data = open('junk', 'rb').read()
while data:
    data = data[os.write(fd, data):]
os._exit(0)
"""


def _many_keys(n_bytes: int) -> bytes:
    """``{"0":"","1":"",...}``: distinct keys, the costliest JSON to parse per byte."""
    parts, size, i = [], 2, 0
    while size < n_bytes:
        parts.append(f'"{i}":""')
        size += len(parts[-1]) + 1
        i += 1
    return ("{" + ",".join(parts) + "}").encode()


def test_junk_in_the_files_descriptor_does_not_hold_the_loop(sb, monkeypatch):
    junk = _many_keys(15 << 20)  # under file_size_mb (16), which caps what a call can write there
    t0 = time.perf_counter()
    json.loads(junk)  # what an unbounded parse costs on this machine, now
    unbounded_s = time.perf_counter() - t0
    held = []
    real = supervisor_module.read_fetched

    def timed(fd, wanted):
        t = time.perf_counter()
        try:
            return real(fd, wanted)
        finally:
            held.append(time.perf_counter() - t)

    monkeypatch.setattr(supervisor_module, "read_fetched", timed)

    async def both():
        big = sb.arun(WRITE_JUNK, timeout=30, files={"junk": junk}, fetch_files=["x"])
        neighbour = sb.arun("import time\ntime.sleep(0.3)\nprint(1)", timeout=30)
        return await asyncio.gather(big, neighbour)

    big, neighbour = asyncio.run(both())
    assert neighbour.status == "ok" and neighbour.stdout == "1\n", neighbour
    # The loop is held only while read_fetched runs: a small part of what json.loads of the same bytes
    # takes (measured just now, so a loaded machine slows both alike).
    assert held and held[0] < unbounded_s / 4, (held, unbounded_s)
    assert big.status == "ok" and big.files == {} and "fetch_files" in big.message, big


@pytest.mark.parametrize("junk", [b"[" * 200_000, b'{"x": {"y": "z"}}', b'{"x": "\xff"}', b"{}{}", b'{"x":'])
def test_malformed_files_are_a_message_not_a_crash(sb, junk):
    res = sb.run(WRITE_JUNK, timeout=10, files={"junk": junk}, fetch_files=["x"])
    assert res.status == "ok" and res.files == {} and "could not be read back" in res.message, res


def test_files_asked_for_still_come_back(sb):
    code = "open('a.txt', 'w').write('A')\nopen('sub/b.bin', 'wb').write(bytes(range(256)))"
    res = sb.run(code, files={"sub/seed": b""}, fetch_files=["a.txt", "sub/b.bin", "absent", "a.txt"])
    assert res.ok and res.message == "", res
    assert {k: base64.b64decode(v) for k, v in res.files.items()} == {"a.txt": b"A", "sub/b.bin": bytes(range(256))}


@pytest.mark.parametrize("files", [{".": ""}, {"./": ""}, {"a" * 256: ""}, {"d": "", "d/x": ""},
                                   {"..": ""}, {"/etc/x": ""}, {"a": "", "./a": ""}])
def test_bad_input_file_names_are_the_callers_error(sb, files):
    with pytest.raises(ValueError, match="input file"):
        sb.run("print(1)", files=files)


def test_too_many_files_to_fetch_is_the_callers_error(sb):
    with pytest.raises(ValueError, match="fetch_files"):
        sb.run("print(1)", fetch_files=[str(i) for i in range(1001)])
