"""Shared fixtures: a tiny synthetic data set and a tiny trained run, made once a session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Keep test processes from oversubscribing the 2 cores (before torch is first imported).
os.environ.setdefault("OMP_NUM_THREADS", "2")

from helpers import tiny_run_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _inductor_cache_in_basetemp(tmp_path_factory: pytest.TempPathFactory):
    """Inductor's compile cache (AOTI packages, torch.compile) in this run's basetemp, which a
    passing run deletes, instead of a /tmp/torchinductor_<user> that grows run after run."""
    old = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path_factory.mktemp("inductor_cache"))
    yield
    if old is None:
        os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
    else:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 synthetic photos (160x240) of 3 cars, with dataset_train/valid.csv."""
    from carseg.datasets.prepare import prepare
    from carseg.datasets.synth import write_dataset

    root = tmp_path_factory.mktemp("tiny_data")
    write_dataset(root, 24, size=(160, 240), seed=7, views=8)
    prepare(root, valid_size=0.34, seed=0)
    return root


@pytest.fixture(scope="session")
def tiny_logdir(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real Catalyst run of the demo config (see tiny_run_config) on tiny_data.

    Holds config.resolved.yml, checkpoints/model.best.pth and summary.json.
    """
    from carseg.train.run import run_config

    logdir = tmp_path_factory.mktemp("tiny_run") / "logs"
    run_config(tiny_run_config(tiny_data, logdir))
    return logdir


@pytest.fixture(scope="session")
def tiny_artifacts(tiny_logdir: Path, tiny_data: Path, tmp_path_factory: pytest.TempPathFactory
                   ) -> Path:
    """TorchScript + ONNX artifacts of tiny_logdir, verified, with their manifest."""
    from export.cli import main as export_main

    out = tmp_path_factory.mktemp("tiny_artifacts") / "art"
    rc = export_main(["all", "--logdir", str(tiny_logdir), "--out", str(out), "--formats",
                      "torchscript,onnx", "--images", str(tiny_data / "dataset_valid.csv")])
    assert rc == 0, "export all failed"
    return out


@pytest.fixture(scope="session")
def tiny_artifacts_all(tiny_artifacts: Path, tiny_logdir: Path,
                       tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny_artifacts plus model.pt2 (AOTInductor): the suite's one AOTI compile."""
    import shutil

    from export.api import export_artifact

    out = tmp_path_factory.mktemp("tiny_artifacts_all") / "art"
    shutil.copytree(tiny_artifacts, out)
    export_artifact("aoti", tiny_logdir, out)
    return out


@pytest.fixture(scope="session")
def tiny_int8(tiny_artifacts: Path, tiny_data: Path, tiny_logdir: Path,
              tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny_artifacts plus model.int8.onnx (`python -m export int8`, calibrated on the training
    CSV's photos), verified."""
    import shutil

    from export.cli import main as export_main

    out = tmp_path_factory.mktemp("tiny_int8") / "art"
    shutil.copytree(tiny_artifacts, out)
    rc = export_main(["int8", str(out), "--calibration", str(tiny_data / "dataset_train.csv"),
                      "--num", "8", "--logdir", str(tiny_logdir), "--images",
                      str(tiny_data / "dataset_valid.csv")])
    assert rc == 0, "export int8 failed its own verify"
    return out
