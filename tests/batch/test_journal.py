"""The journal survives torn writes and keeps each job's last state; the lock keeps a second driver out."""

from __future__ import annotations

import subprocess
import sys

import pytest

from medsam.batch.journal import BatchLock, Journal, read_events
from medsam.errors import OutputError


def test_states_are_the_last_event_with_attempts_counted(tmp_path):
    with Journal(tmp_path) as journal:
        journal.append("running", job="a", fingerprint="f1", worker="w0")
        journal.append("lost", job="a", fingerprint="f1", error="killed")
        journal.append("running", job="a", fingerprint="f1")
        journal.append("done", job="a", fingerprint="f1", files=["a/m.png"], seconds=1.5)
        journal.append("running", job="b", fingerprint="f2")
        journal.append("failed", job="b", fingerprint="f2", error="bad file")
        journal.append("running", job="c", fingerprint="f3")
    states = Journal(tmp_path).states()
    assert (states["a"].state, states["a"].attempts, states["a"].files, states["a"].seconds) == ("done", 2, ("a/m.png",), 1.5)
    assert (states["b"].state, states["b"].error) == ("failed", "bad file")
    assert states["c"].state == "running"


def test_a_torn_last_line_is_skipped_and_the_next_event_starts_clean(tmp_path):
    with Journal(tmp_path) as journal:
        journal.append("done", job="a", fingerprint="f")
    with open(journal.path, "ab") as fh:
        fh.write(b'{"event":"done","job":"b","finger')  # the driver was killed mid-line
    assert [e["job"] for e in read_events(journal.path)] == ["a"]
    with Journal(tmp_path) as again:
        again.append("done", job="c", fingerprint="f")
    assert [e["job"] for e in read_events(journal.path)] == ["a", "c"]
    assert set(Journal(tmp_path).states()) == {"a", "c"}


def test_one_driver_per_output_folder(tmp_path):
    with BatchLock(tmp_path):
        with pytest.raises(OutputError, match=r"in use by another `medsam batch` \(pid \d+\)"):
            BatchLock(tmp_path).acquire()
        code = ("import sys; from medsam.batch.journal import BatchLock\n"
                "try:\n    BatchLock(sys.argv[1]).acquire()\nexcept Exception as e:\n    print(type(e).__name__)\n")
        out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True)
        assert out.stdout.strip() == "OutputError"
    BatchLock(tmp_path).acquire().release()  # free again once released


def test_the_lock_dies_with_its_holder(tmp_path):
    code = ("import sys, time; from medsam.batch.journal import BatchLock\n"
            "lock = BatchLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputError):
            BatchLock(tmp_path).acquire()
        holder.kill()
        holder.wait(timeout=10)
        BatchLock(tmp_path).acquire().release()
    finally:
        if holder.poll() is None:
            holder.kill()
