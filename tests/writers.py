"""Other writers, for the tests of the one-writer rule: a process holding a run folder's lock, threads
writing at once."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import textwrap
import threading

HOLDER = textwrap.dedent("""
    import sys, time
    from refinelib.runs import RunLock
    with RunLock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(float(sys.argv[2]))
""")


def spawn(folder, seconds: float = 60) -> subprocess.Popen:
    """A process that takes ``RunLock(folder)`` and holds it for ``seconds`` (returns once it holds it)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), str(seconds)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


@contextlib.contextmanager
def held(folder):
    """``with held(folder) as proc:`` another process holds the folder's lock (killed on exit)."""
    proc = spawn(folder)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def in_threads(write, n: int = 4) -> list[Exception]:
    """Run ``write(i)`` in ``n`` threads at once; return the exceptions they raised."""
    errors = []

    def guarded(i):
        try:
            write(i)
        except Exception as why:  # noqa: BLE001 - returned to the test
            errors.append(why)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors
