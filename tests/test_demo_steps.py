"""make demo's step runner: a failed step stops the demo, except a refusal the step allows
(exit 1 of `export int8` when verify refused the quantized model alone, as its manifest
shows), which is said and passed."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parents[1] / "python" / "demo.py"


def _demo():
    spec = importlib.util.spec_from_file_location("carseg_demo_script", DEMO)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _exit(code: int) -> list[str]:
    return [sys.executable, "-c", f"raise SystemExit({code})"]


def test_a_refusal_the_step_allows_is_said_and_the_demo_goes_on(capsys) -> None:
    steps = _demo().Steps()
    steps.run("export int8 + verify", _exit(1), refused=lambda: "verify refused the int8 model")
    out = capsys.readouterr().out
    assert "=== export int8 + verify: refused after" in out
    assert "verify refused the int8 model" in out
    assert [name for name, _ in steps.times] == ["export int8 + verify"]


@pytest.mark.parametrize(("code", "why"), [(1, None), (1, "not asked"), (2, "refused"),
                                           (3, None)])
def test_any_other_failure_stops_the_demo(code: int, why: str | None) -> None:
    refused = None if why == "not asked" else (lambda: why)
    with pytest.raises(SystemExit, match=f"step 'x' failed \\(exit {code}\\)"):
        _demo().Steps().run("x", _exit(code), refused=refused)


def test_a_step_that_succeeds_is_timed(capsys) -> None:
    steps = _demo().Steps()
    steps.run("ok", _exit(0), refused=lambda: "never said")
    out = capsys.readouterr().out
    assert "=== ok: done in" in out and "never said" not in out
    assert [name for name, _ in steps.times] == ["ok"]


def _manifest(tmp_path: Path, int8: object, others: object = True) -> Path:
    arts = {"torchscript": {"parity": {"passed": others}}, "onnx": {"parity": {"passed": True}},
            "aoti": None, "onnx_int8": int8}
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"artifacts": arts}))
    return path


def test_only_a_verify_refusal_of_the_int8_model_is_a_refusal(tmp_path: Path) -> None:
    int8_refused = _demo().int8_refused
    why = int8_refused(_manifest(tmp_path, {"parity": {"passed": False, "mask_iou": 0.98}}))
    assert why is not None and "mask IoU 0.98" in why and "runs fp32" in why
    # Not a refusal: int8 passed (the failure was elsewhere), never verified (a crash before
    # verify), another artifact failed too, or no readable manifest.
    for int8, others in (({"parity": {"passed": True}}, True), ({"parity": None}, True),
                         ({"file": "model.int8.onnx"}, True), (None, True),
                         ({"parity": {"passed": False}}, False)):
        assert int8_refused(_manifest(tmp_path, int8, others)) is None, (int8, others)
    (tmp_path / "bad.json").write_text("[1, 2")
    assert int8_refused(tmp_path / "bad.json") is None
    assert int8_refused(tmp_path / "missing.json") is None
