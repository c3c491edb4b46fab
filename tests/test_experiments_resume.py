"""Killing experiments/spirals.py mid-run and running it again loses no completed step."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "spirals.py"
STEPS = 1000
EVERY = 10


def _records(path: pathlib.Path) -> list[dict]:
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by the kill
            pass
    return out


def test_sigkill_then_rerun_resumes_from_the_checkpoint(tmp_path):
    out = tmp_path / "run"
    part = out / "rnn_dt_n30"  # the RNN part: the same Trainer, a fraction of the compile time
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--preset",
        "smoke",
        "--out",
        str(out),
        "--no-progress",
        "--set",
        "parts=rnn_dt",
        "--set",
        f"rnn_steps={STEPS}",
        "--set",
        f"checkpoint_every={EVERY}",
        "--set",
        "log_every=1",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 120
        while not (part / "checkpoint.eqx").is_file():
            assert proc.poll() is None, (tmp_path / "first.log").read_text()
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "summary.json").exists(), "the run finished before it was killed"
    before = _records(part / "metrics.jsonl")
    assert before, "nothing was logged before the kill"
    assert before[-1]["step"] < STEPS

    second = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300, check=False
    )
    assert second.returncode == 0, second.stdout + second.stderr
    assert "resuming from checkpoint" in second.stdout

    after = _records(part / "metrics.jsonl")
    steps = [r["step"] for r in after]
    assert steps == list(range(1, STEPS + 1)), steps  # contiguous, no duplicates, complete
    # Steps up to the checkpoint the rerun started from were kept as they were, not redone.
    resumed_from = (before[-1]["step"] // EVERY) * EVERY
    assert resumed_from >= EVERY
    # (The whole record is compared: a redone step would have a different time stamp.)
    kept = [r for r in before if r["step"] <= resumed_from]
    assert after[: len(kept)] == kept
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed"] is True
    assert summary["tasks"]["rnn_dt_n30"]["steps"] == STEPS
    timing = json.loads((part / "timing.json").read_text())
    assert timing["invocations"] == 1  # the killed invocation never finished its fit
