"""Smoke tests: the examples (and the `make demo` entry point) run and write what they promise."""

from __future__ import annotations

import importlib.util
import json
import pathlib

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_spiral_demo_writes_run_folder(tmp_path):
    demo = _load("spiral_demo")
    summary = demo.main(["--out", str(tmp_path), "--iters", "3", "--batch", "4"])
    for name in ("config.json", "metrics.jsonl", "summary.json", "spiral.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [0, 1, 2]
    assert all(json.loads(line)["nfe"] > 0 for line in lines)
    assert summary["trajectory_rmse"] > 0


def test_backward_nfe_example(capsys):
    _load("backward_nfe").main()
    out = capsys.readouterr().out
    assert out.count("NFE-B") == 3
    nfe_b = [int(line.split("NFE-B")[1].split()[0]) for line in out.splitlines()]
    assert all(n > 0 for n in nfe_b)


def test_robertson_fit_example_reduces_the_loss(capsys):
    summary = _load("robertson_fit").main(["--iters", "4"])
    assert summary["final_loss"] < summary["initial_loss"]
    assert all(0 <= e < 1.5 for e in summary["relative_error"])
    assert summary["rodas5_steps"] < 200  # stiff: an explicit solver needs ~1e5 steps
    assert "relative errors" in capsys.readouterr().out


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__])
