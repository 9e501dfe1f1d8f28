"""Bad input to `python -m export`: one fixture per defect, a message that names it, exit 2,
and never a half-written artifact left behind."""

from __future__ import annotations

import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import REPO

from export.cli import main


def _left_behind(folder: Path) -> list[str]:
    """Files an export leaves in `folder` (model files, temporaries)."""
    if not folder.exists():
        return []
    return sorted(p.name for p in folder.iterdir())


def _run(argv: list[str], capsys) -> tuple[int, str]:
    rc = main(argv)
    return rc, capsys.readouterr().err


@pytest.fixture
def logdir_without_checkpoint(tiny_logdir: Path, tmp_path: Path) -> Path:
    d = tmp_path / "no_checkpoint"
    d.mkdir()
    shutil.copy(tiny_logdir / "config.resolved.yml", d)
    return d


@pytest.fixture
def logdir_without_config(tiny_logdir: Path, tmp_path: Path) -> Path:
    d = tmp_path / "no_config"
    shutil.copytree(tiny_logdir / "checkpoints", d / "checkpoints")
    return d


@pytest.fixture
def checkpoint_of_another_model(tiny_logdir: Path, tmp_path: Path) -> Path:
    """The tiny run's weights with one key dropped, one added and one reshaped."""
    state = torch.load(tiny_logdir / "checkpoints" / "model.best.pth", weights_only=True)
    state.pop("segmentation_head.0.bias")
    state["decoder.extra.weight"] = torch.zeros(3)
    state["encoder.conv1.weight"] = torch.zeros(64, 4, 7, 7)
    path = tmp_path / "other_arch.pth"
    torch.save(state, path)
    return path


def test_logdir_without_checkpoint(logdir_without_checkpoint: Path, tmp_path: Path,
                                   capsys) -> None:
    out = tmp_path / "out"
    rc, err = _run(["trace", "--logdir", str(logdir_without_checkpoint), "--out", str(out)],
                   capsys)
    assert rc == 2
    assert err.startswith("export: error: ")
    assert "model.best.pth: no checkpoint in this logdir" in err
    assert _left_behind(out) == []


def test_logdir_without_resolved_config(logdir_without_config: Path, tmp_path: Path,
                                        capsys) -> None:
    out = tmp_path / "out"
    rc, err = _run(["onnx", "--logdir", str(logdir_without_config), "--out", str(out)], capsys)
    assert rc == 2
    assert f"{logdir_without_config / 'config.resolved.yml'}: the logdir has no resolved " \
           f"config" in err
    assert _left_behind(out) == []


def test_missing_logdir(tmp_path: Path, capsys) -> None:
    rc, err = _run(["trace", "--logdir", str(tmp_path / "nope")], capsys)
    assert rc == 2 and f"{tmp_path / 'nope'}: logdir not found" in err


def test_checkpoint_of_another_architecture(tiny_logdir: Path, checkpoint_of_another_model: Path,
                                            tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    rc, err = _run(["trace", "--logdir", str(tiny_logdir), "--out", str(out), "--checkpoint",
                    str(checkpoint_of_another_model)], capsys)
    assert rc == 2
    assert f"{checkpoint_of_another_model}: does not fit the model Unet/resnet18" in err
    assert "1 missing key(s): segmentation_head.0.bias" in err
    assert "1 unexpected key(s): decoder.extra.weight" in err
    assert "encoder.conv1.weight [64, 4, 7, 7] vs [64, 3, 7, 7]" in err
    assert _left_behind(out) == []


def test_checkpoint_that_is_not_one(tiny_logdir: Path, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "truncated.pth"
    bad.write_bytes((tiny_logdir / "checkpoints" / "model.best.pth").read_bytes()[:1000])
    rc, err = _run(["trace", "--logdir", str(tiny_logdir), "--out", str(tmp_path / "o"),
                    "--checkpoint", str(bad)], capsys)
    assert rc == 2 and f"{bad}: not a readable checkpoint" in err


def test_output_folder_cannot_be_written(tiny_logdir: Path, tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    out = blocker / "artifacts"
    rc, err = _run(["trace", "--logdir", str(tiny_logdir), "--out", str(out)], capsys)
    assert rc == 2
    assert f"{out}: cannot create the output folder" in err
    assert blocker.read_text() == "not a folder"


@pytest.mark.skipif(sys.platform == "win32" or not hasattr(sys, "getuid") or
                    __import__("os").getuid() == 0,
                    reason="root writes into read-only folders; the file-in-the-way case above "
                           "covers the message")
def test_output_folder_read_only(tiny_logdir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        rc, err = _run(["trace", "--logdir", str(tiny_logdir), "--out", str(out)], capsys)
    finally:
        out.chmod(stat.S_IRWXU)
    assert rc == 2 and f"{out}: output folder is not writable" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_device_cuda_without_one(tiny_logdir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    rc, err = _run(["trace", "--logdir", str(tiny_logdir), "--out", str(out), "--device",
                    "cuda"], capsys)
    assert rc == 2 and "--device cuda: no CUDA device here" in err
    assert _left_behind(out) == []


@pytest.mark.parametrize("opset", ["99", "17"])
def test_opset_the_installed_torch_cannot_write(opset: str, tiny_logdir: Path, tmp_path: Path,
                                                capsys) -> None:
    out = tmp_path / "out"
    rc, err = _run(["onnx", "--logdir", str(tiny_logdir), "--out", str(out), "--opset", opset],
                   capsys)
    assert rc == 2
    assert f"--opset {opset}: torch {torch.__version__.split('+')[0]} cannot write it" in err
    assert "writes opsets 18 to" in err
    assert _left_behind(out) == []


def test_folder_of_another_precision_is_refused(tiny_artifacts: Path, tiny_logdir: Path,
                                                tmp_path: Path, capsys) -> None:
    fp32 = tiny_artifacts
    out = tmp_path / "mixed"
    out.mkdir()
    shutil.copy(fp32 / "manifest.json", out)
    rc, err = _run(["trace", "--logdir", str(tiny_logdir), "--out", str(out), "--precision",
                    "fp16"], capsys)
    assert rc == 2
    assert "holds float32 artifacts; a folder holds one precision" in err
    assert _left_behind(out) == ["manifest.json"]


@pytest.fixture
def segfaulting_python(tmp_path: Path, monkeypatch) -> None:
    """sys.executable made a program that says a word and dies of SIGSEGV, as the fp16 GPU
    compile did: the AOTI child process crashes."""
    fake = tmp_path / "python-that-segfaults"
    fake.write_text("#!/bin/sh\necho 'compiling...' >&2\nkill -SEGV $$\n")
    fake.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fake))


def test_aoti_compiler_crash_is_an_error_not_a_crash(tiny_logdir: Path, tmp_path: Path,
                                                     segfaulting_python, capsys) -> None:
    """The child process dies of SIGSEGV: a clear error, and no file."""
    out = tmp_path / "out"
    rc, err = _run(["aoti", "--logdir", str(tiny_logdir), "--out", str(out)], capsys)
    assert rc == 2
    assert "AOTInductor compile crashed (SIGSEGV) in its child process; no model.pt2 " \
           "written" in err
    assert "compiling..." in err  # the child's last words are shown
    assert _left_behind(out) == []


def test_all_keeps_other_artifacts_when_aoti_crashes(tiny_logdir: Path, tmp_path: Path,
                                                     segfaulting_python, capsys) -> None:
    out = tmp_path / "out"
    rc = main(["all", "--logdir", str(tiny_logdir), "--out", str(out), "--formats",
               "torchscript,aoti", "--skip-verify"])
    captured = capsys.readouterr()
    assert rc == 2
    assert "export: error: aoti: AOTInductor compile crashed (SIGSEGV)" in captured.err
    assert "not written: aoti" in captured.err
    assert _left_behind(out) == ["manifest.json", "model.torchscript.pt"]


def test_unknown_format_in_all(tiny_logdir: Path, capsys) -> None:
    rc, err = _run(["all", "--logdir", str(tiny_logdir), "--formats", "torchscript,tflite"],
                   capsys)
    assert rc == 2 and "--formats: unknown format 'tflite'" in err


def test_verify_without_manifest(tmp_path: Path, capsys) -> None:
    rc, err = _run(["verify", str(tmp_path)], capsys)
    assert rc == 2 and f"{tmp_path / 'manifest.json'}: no manifest" in err


def test_help_has_examples(capsys) -> None:
    proc = subprocess.run([sys.executable, "-m", "export", "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "example: python -m export all" in proc.stdout
    assert "aoti-worker" not in proc.stdout  # internal
    for cmd in ("trace", "onnx", "aoti", "all", "verify"):
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0
        assert f"example: python -m export {cmd}" in capsys.readouterr().out
