"""Killing `python -m experiments.spirals` mid-run and running it again loses no completed
step."""

from __future__ import annotations

import json
import subprocess
import sys

from helpers import REPO_ROOT, child_env, kill_when, read_jsonl

STEPS = 1000
EVERY = 10


def test_sigkill_then_rerun_resumes_from_the_checkpoint(tmp_path):
    out = tmp_path / "run"
    part = out / "rnn_dt_n30"  # the RNN part: the same Trainer, a fraction of the compile time
    cmd = [
        sys.executable,
        "-m",
        "experiments.spirals",
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
    env = child_env()
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:  # killed as soon as the first checkpoint is on disk
        kill_when(proc, (part / "checkpoint.eqx").is_file, timeout=120,
                  output=(tmp_path / "first.log").read_text)
    finally:
        log.close()
    assert not (out / "summary.json").exists(), "the run finished before it was killed"
    before = read_jsonl(part / "metrics.jsonl")
    assert before, "nothing was logged before the kill"
    assert before[-1]["step"] < STEPS

    second = subprocess.run(
        cmd, cwd=REPO_ROOT, capture_output=True, text=True, env=env, timeout=300, check=False
    )
    assert second.returncode == 0, second.stdout + second.stderr
    assert "resuming from checkpoint" in second.stdout

    after = read_jsonl(part / "metrics.jsonl")
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
