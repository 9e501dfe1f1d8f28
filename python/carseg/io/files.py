"""Writing files so that no half-written one is ever seen: everything goes to a fresh temporary
name in the target folder, then is renamed (staged, write_atomic). Every writer in carseg and
the exporter goes through here."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from carseg.errors import CarsegError


def prepare_out_dir(out: str | Path) -> Path:
    """Create `out` if needed and prove it is writable, before any slow step runs."""
    out = Path(out).absolute()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise CarsegError(f"{out}: cannot create the output folder (a file is in the way)"
                          ) from None
    except OSError as e:
        raise CarsegError(f"{out}: cannot create the output folder ({e.strerror or e})"
                          ) from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", dir=out)
        os.close(fd)
        Path(probe).unlink()
    except OSError as e:
        raise CarsegError(f"{out}: output folder is not writable ({e.strerror or e})") from None
    return out


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def publish(tmp: Path, final: Path) -> None:
    """Give a temporary file ordinary permissions (mkstemp makes it 0600), then rename it."""
    tmp.chmod(0o666 & ~_umask())
    tmp.replace(final)


def temp_path(out: Path, final_name: str) -> Path:
    """A fresh temporary name in `out` (same file system, so the final rename is atomic)."""
    # keep the extension last: some writers insist on it (aoti_compile_and_package: .pt2)
    fd, tmp = tempfile.mkstemp(prefix=f".{final_name}.", suffix=f".tmp{Path(final_name).suffix}",
                               dir=out)
    os.close(fd)
    return Path(tmp)


@contextlib.contextmanager
def staged(out: Path, final_name: str) -> Iterator[Path]:
    """Yield a temporary path; on success rename it to out/final_name, else delete it."""
    tmp = temp_path(out, final_name)
    try:
        yield tmp
        if not tmp.is_file() or tmp.stat().st_size == 0:
            raise CarsegError(f"{out / final_name}: nothing was written")
        publish(tmp, out / final_name)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write `data` (text as UTF-8) to a fresh temporary name beside `path`, then rename it
    over `path`."""
    with staged(path.parent, path.name) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
