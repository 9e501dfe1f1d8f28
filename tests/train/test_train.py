"""Training from the Catalyst config: carseg train, catalyst-run, DDP, and config errors."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import quiet_in_process

from carseg.cli import main
from carseg.errors import ConfigError
from carseg.train import config as cfg
from carseg.train.models import build_model, model_spec
from carseg.train.run import prepare_config

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "python" / "carseg" / "configs"
VENV_BIN = Path(sys.executable).parent


def _check_run(logdir: Path, image_size: int) -> dict:
    resolved = yaml.safe_load((logdir / cfg.RESOLVED_NAME).read_text())
    cfg.validate(resolved)
    assert resolved["shared"]["image_size"] == image_size
    step = cfg.train_step(resolved)
    assert Path(step["logdir"]) == logdir.resolve()
    model = build_model(**model_spec(step["model"]))
    state = torch.load(logdir / "checkpoints" / "model.best.pth", map_location="cpu")
    model.load_state_dict(state)  # strict: every key fits the architecture in the config
    summary = json.loads((logdir / "summary.json").read_text())
    for key in ("dice", "iou", "loss"):
        assert key in summary["valid"]
    assert 0.0 <= summary["valid"]["iou"] <= summary["valid"]["dice"] <= 1.0
    # model.best.pth is the best epoch's own weights (Catalyst 22.04 saved the latest)
    best = torch.load(logdir / "checkpoints" / f"model.{summary['best_epoch']:04d}.pth",
                      map_location="cpu")
    assert all(torch.equal(state[k], best[k]) for k in state)
    assert (logdir / "csv_logger" / "valid.csv").is_file()
    assert any((logdir / "tensorboard").rglob("events.out.tfevents.*"))
    return summary


def test_one_epoch_run_writes_checkpoint_config_and_summary(tiny_logdir: Path) -> None:
    summary = _check_run(tiny_logdir, image_size=64)
    assert summary["best_epoch"] == 1 and summary["num_epochs"] == 1


def test_same_config_same_model(tiny_data: Path, tiny_logdir: Path, tmp_path: Path) -> None:
    """Seeded initial weights + Catalyst's seed: a rerun gives the same weights, bit for bit."""
    from helpers import tiny_run_config

    from carseg.train.run import run_config

    run_config(tiny_run_config(tiny_data, tmp_path / "again"))
    a = torch.load(tiny_logdir / "checkpoints" / "model.best.pth", map_location="cpu")
    b = torch.load(tmp_path / "again" / "checkpoints" / "model.best.pth", map_location="cpu")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _tiny_config_file(tmp_path: Path, data: Path, epochs: int) -> Path:
    config = prepare_config([CONFIGS / "train.yml"], logdir=tmp_path / "logs", data=data,
                            epochs=epochs, image_size=64)
    quiet_in_process(config)
    path = tmp_path / "tiny.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.mark.slow
def test_catalyst_run_trains_the_config_as_is(tiny_data: Path, tmp_path: Path) -> None:
    """`catalyst-run --config` (Catalyst's own CLI) on a carseg config, 2 epochs."""
    path = _tiny_config_file(tmp_path, tiny_data, epochs=2)
    proc = subprocess.run([str(VENV_BIN / "catalyst-run"), "--config", str(path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = _check_run(tmp_path / "logs", image_size=64)
    assert summary["num_epochs"] == 2


@pytest.mark.slow
def test_ddp_on_two_cpu_processes(tiny_data: Path, tmp_path: Path) -> None:
    path = _tiny_config_file(tmp_path, tiny_data, epochs=1)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [str(VENV_BIN / "carseg"), "train", "-C", str(path), str(CONFIGS / "train_ddp_cpu.yml")],
        capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resolved = yaml.safe_load((tmp_path / "logs" / cfg.RESOLVED_NAME).read_text())
    assert resolved["runner"]["engine"]["_target_"] == "carseg.train.engines.ddp_cpu_engine"
    _check_run(tmp_path / "logs", image_size=64)


def test_overrides_replace_every_occurrence(tiny_data: Path, tmp_path: Path) -> None:
    config = prepare_config([CONFIGS / "train.yml"], logdir=tmp_path / "l", data=tiny_data,
                            epochs=3, image_size=96)
    step = config["run"][0]
    assert step["num_epochs"] == 3 and step["scheduler"]["num_epochs"] == 3
    assert config["shared"]["image_size"] == 96
    for loader in step["loaders"].values():
        assert loader["dataset"]["transforms"]["image_size"] == 96
        assert Path(loader["dataset"]["csv_path"]).parent == tiny_data.resolve()
    assert step["logdir"] == str((tmp_path / "l").resolve())


@pytest.mark.parametrize("patch, message", [
    ({"optimiser": {}}, r"unknown top-level key\(s\) \['optimiser'\]"),
    ({"run": [{"_call_": "train", "num_epoch": 3, "model": {}, "loaders": {}, "logdir": "x"}]},
     r"run.train: unknown key\(s\) \['num_epoch'\]"),
    ({"shared": {"imagesize": 64}}, r"shared: unknown key\(s\) \['imagesize'\]"),
])
def test_unknown_config_keys_are_named(tmp_path: Path, patch: dict, message: str) -> None:
    base = cfg.load_configs([CONFIGS / "train.yml"])
    base.update(patch)
    with pytest.raises(ConfigError, match=message):
        cfg.validate(base)


def test_unknown_model_key_is_named() -> None:
    with pytest.raises(ConfigError, match=r"model: unknown key\(s\) \['encoder_dept'\]"):
        build_model(arch="Unet", encoder_name="resnet18", encoder_dept=5)
    with pytest.raises(ConfigError, match="unknown architecture 'UNet'"):
        build_model(arch="UNet")


def test_cli_errors_are_one_line_with_exit_2(tiny_data: Path, tmp_path: Path, capsys) -> None:
    assert main(["train", "--data", str(tmp_path / "missing"), "--epochs", "1"]) == 2
    assert "missing: data folder not found" in capsys.readouterr().err
    bad = tmp_path / "bad.yml"
    bad.write_text("runner: {_target_: x}\nrun: []\nloaders: 1\n")
    assert main(["train", "--config", str(bad)]) == 2
    assert "unknown top-level key(s) ['loaders']" in capsys.readouterr().err
    # a data folder whose CSV names a corrupt photo: refused before training, by name
    data = tmp_path / "data"
    data.mkdir()
    rows = (tiny_data / "dataset_train.csv").read_text().splitlines()
    first_image = rows[1].split(",")[0]
    broken = data / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    rows[1] = rows[1].replace(first_image, str(broken))
    (data / "dataset_train.csv").write_text("\n".join(rows) + "\n")
    (data / "dataset_valid.csv").write_text((tiny_data / "dataset_valid.csv").read_text())
    assert main(["train", "--data", str(data), "--epochs", "1", "--logdir",
                 str(tmp_path / "l")]) == 2
    err = capsys.readouterr().err
    assert f"{broken}: corrupt or truncated image" in err and "Traceback" not in err


@pytest.mark.slow
def test_a_run_never_replaces_another_runs_results(tiny_data: Path, tiny_logdir: Path,
                                                   tmp_path: Path, capsys) -> None:
    """carseg train and catalyst-run refuse a logdir holding a run, touching nothing in it;
    `carseg train --overwrite` replaces it, as asked."""
    logdir = tmp_path / "logs"
    shutil.copytree(tiny_logdir, logdir)
    before = {p: p.stat().st_mtime_ns for p in logdir.rglob("*")}
    args = ["train", "--data", str(tiny_data), "--logdir", str(logdir), "--epochs", "1",
            "--image-size", "64"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{logdir}: holds a previous run (config.resolved.yml, summary.json, checkpoints" in err
    assert "--overwrite" in err
    path = _tiny_config_file(tmp_path, tiny_data, epochs=1)  # its run.logdir is tmp/logs
    proc = subprocess.run([str(VENV_BIN / "catalyst-run"), "--config", str(path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and "holds a previous run" in proc.stderr
    assert before == {p: p.stat().st_mtime_ns for p in logdir.rglob("*")}, "the run was touched"
    from helpers import tiny_run_config

    from carseg.train.run import run_config

    run_config(tiny_run_config(tiny_data, logdir), overwrite=True)
    assert (logdir / "checkpoints" / "model.best.pth").stat().st_mtime_ns > \
        before[logdir / "checkpoints" / "model.best.pth"]


def _old_names(config_text: str) -> str:
    """A config as the layout before carseg's rooms wrote it: carseg.runner, carseg.data, ..."""
    from carseg._compat import MOVED

    for old, new in MOVED.items():
        config_text = config_text.replace(f"{new}.", f"{old}.")
    return config_text


def test_old_target_names_resolve_to_the_same_objects() -> None:
    from catalyst.registry import REGISTRY

    text = (CONFIGS / "train.yml").read_text()
    targets = sorted(set(re.findall(r"_target_: (carseg\.[\w.]+)", text)))
    assert len(targets) >= 8
    for new in targets:
        old = _old_names(new)
        assert old != new, new
        assert REGISTRY.get(old) is REGISTRY.get(new), old


@pytest.mark.slow
def test_a_config_with_the_old_names_trains_and_its_logdir_exports(tiny_data: Path,
                                                                    tmp_path: Path) -> None:
    """Configs and logdirs written before the rooms name carseg.runner, carseg.models, ...:
    catalyst-run still trains them, and `python -m export trace` still exports the run."""
    path = _tiny_config_file(tmp_path, tiny_data, epochs=1)
    path.write_text(_old_names(path.read_text()))
    assert "carseg.runner.SegmentationRunner" in path.read_text()
    proc = subprocess.run([str(VENV_BIN / "catalyst-run"), "--config", str(path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resolved = (tmp_path / "logs" / cfg.RESOLVED_NAME).read_text()
    assert "carseg.data.SegmentationDataset" in resolved
    proc = subprocess.run([sys.executable, "-m", "export", "trace", "--logdir",
                           str(tmp_path / "logs"), "--out", str(tmp_path / "art")],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "art" / "model.torchscript.pt").is_file()


def test_the_carvana_config_trains_with_its_crop_scaled(tiny_data: Path, tmp_path: Path) -> None:
    """train_carvana.yml (made for 512 px and a GPU) runs as is on the CPU at 128 px: its
    training crop of 352 rows follows the size to 96, and the best checkpoint is the least
    valid loss on coverage targets."""
    from carseg.train.run import run_config

    config = prepare_config([CONFIGS / "train_carvana.yml"], logdir=tmp_path / "logs",
                            data=tiny_data, epochs=2, image_size=128)
    step = config["run"][0]
    assert step["loaders"]["train"]["dataset"]["transforms"]["train_crop"] == 96
    assert step["valid_metric"] == "loss" and step["minimize_valid_metric"] is True
    quiet_in_process(config)
    run_config(config)
    summary = _check_run(tmp_path / "logs", image_size=128)
    rows = list(csv.DictReader((tmp_path / "logs" / "csv_logger" / "valid.csv").open()))
    losses = [float(r["loss"]) for r in rows]
    assert summary["metric"] == "loss" and len(losses) == 2
    assert summary["best_epoch"] == 1 + losses.index(min(losses))
    assert summary["valid"]["loss"] == pytest.approx(min(losses), rel=1e-6)
