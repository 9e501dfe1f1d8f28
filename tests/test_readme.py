"""README.md as a new user meets it: every code block runs as written, in order.

The blocks run in a fresh folder laid out as `make demo` leaves the repository (demo/artifacts,
demo/held_out, demo/car.jpg, demo/csv; python/ for the configs), scaled down to the test
suite's tiny model, with .venv/bin first on PATH, as an activated shell has it. Shell blocks run
under `bash -euo pipefail`, Python blocks in a fresh interpreter, and the C++ block must be the
program that ctest builds and runs (cpp/tests/downstream/main.cpp). A block that cannot run
here says so in a comment right above it: `<!-- readme-test: skip: REASON -->`.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
CPP_EXAMPLE = REPO / "cpp" / "tests" / "downstream" / "main.cpp"
BLOCK = re.compile(
    r"(?:<!-- readme-test: (?P<mark>.*?) -->\n)?```(?P<lang>[\w+]*)\n(?P<code>.*?)```", re.S)
RUNNABLE = ("bash", "python")


@dataclass(frozen=True)
class Block:
    line: int
    lang: str
    code: str
    skip: str | None  # the reason it does not run here, or None

    @property
    def id(self) -> str:
        return f"line{self.line}-{self.lang}"


def readme_blocks() -> list[Block]:
    text = README.read_text()
    out = []
    for m in BLOCK.finditer(text):
        mark = m.group("mark")
        skip = None
        if mark is not None:
            assert mark.startswith("skip: ") and len(mark) > 12, f"a mark needs a reason: {mark}"
            skip = mark.removeprefix("skip: ")
        line = text.count("\n", 0, m.start("lang")) + 1
        out.append(Block(line, m.group("lang"), m.group("code"), skip))
    return out


BLOCKS = readme_blocks()


def test_every_block_has_a_language_and_the_cpp_one_is_the_tested_program() -> None:
    assert BLOCKS and all(b.lang for b in BLOCKS), [b.id for b in BLOCKS if not b.lang]
    unknown = {b.lang for b in BLOCKS} - {"bash", "python", "cpp", "cmake", "text"}
    assert not unknown, unknown
    (cpp,) = [b for b in BLOCKS if b.lang == "cpp"]
    assert cpp.code == CPP_EXAMPLE.read_text(), \
        "README's C++ example must be cpp/tests/downstream/main.cpp, which ctest builds and runs"
    for b in BLOCKS:
        if b.lang in ("cmake", "text"):
            continue
        assert b.lang in RUNNABLE + ("cpp",)


def _git_status() -> str:
    return subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True,
                          text=True).stdout


@pytest.fixture(scope="module")
def workspace(tiny_artifacts_all: Path, tiny_data: Path,
              tmp_path_factory: pytest.TempPathFactory):
    """A folder as `make demo` leaves the repository, at the test suite's scale."""
    from carseg.datasets.prepare import read_csv

    ws = tmp_path_factory.mktemp("readme")
    (ws / "python").symlink_to(REPO / "python")
    demo = ws / "demo"
    shutil.copytree(tiny_artifacts_all, demo / "artifacts")
    (demo / "csv").mkdir(parents=True)
    for name in ("dataset_train.csv", "dataset_valid.csv"):
        shutil.copy(tiny_data / name, demo / "csv" / name)
    (demo / "held_out").mkdir()
    for photo, _ in read_csv(tiny_data / "dataset_valid.csv")[:4]:
        shutil.copy(photo, demo / "held_out" / photo.name)
    shutil.copy(next((demo / "held_out").iterdir()), demo / "car.jpg")
    before = _git_status()
    yield ws
    assert _git_status() == before, "README's commands changed the repository's git status"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(Path(sys.executable).parent.parent)
    env.setdefault("OMP_NUM_THREADS", "2")
    return env


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run in a process group of its own, and end whatever it left running (a server a
    failed block started in the background)."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=900)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(cmd, proc.returncode, out, "")


@pytest.mark.slow
@pytest.mark.parametrize("block", [b for b in BLOCKS if b.lang in RUNNABLE], ids=lambda b: b.id)
def test_readme_block_runs_as_written(block: Block, workspace: Path) -> None:
    if block.skip is not None:
        pytest.skip(f"README.md:{block.line}: {block.skip}")
    if block.lang == "bash":
        r = _run(["bash", "-euo", "pipefail", "-c", block.code], workspace)
    else:
        r = _run([sys.executable, "-c", block.code], workspace)
    assert r.returncode == 0, f"README.md:{block.line} ({block.lang}) failed:\n{block.code}\n" \
                              f"---\n{r.stdout[-4000:]}"
