"""make demo's step runner: a failed step stops the demo, except a refusal the step allows
(exit 1 of `export int8` when verify refuses the quantized model), which is said and passed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parents[1] / "python" / "demo.py"


def _steps():
    spec = importlib.util.spec_from_file_location("carseg_demo_script", DEMO)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Steps()


def _exit(code: int) -> list[str]:
    return [sys.executable, "-c", f"raise SystemExit({code})"]


def test_a_refusal_the_step_allows_is_said_and_the_demo_goes_on(capsys) -> None:
    steps = _steps()
    steps.run("export int8 + verify", _exit(1), refused="verify refused the int8 model")
    out = capsys.readouterr().out
    assert "=== export int8 + verify: refused after" in out
    assert "verify refused the int8 model" in out
    assert [name for name, _ in steps.times] == ["export int8 + verify"]


@pytest.mark.parametrize(("code", "refused"), [(1, None), (2, "verify refused"), (3, None)])
def test_any_other_failure_stops_the_demo(code: int, refused: str | None) -> None:
    with pytest.raises(SystemExit, match=f"step 'x' failed \\(exit {code}\\)"):
        _steps().run("x", _exit(code), refused=refused)


def test_a_step_that_succeeds_is_timed(capsys) -> None:
    steps = _steps()
    steps.run("ok", _exit(0), refused="never said")
    out = capsys.readouterr().out
    assert "=== ok: done in" in out and "never said" not in out
    assert [name for name, _ in steps.times] == ["ok"]
