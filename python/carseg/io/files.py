"""Writing files so that no half-written one is ever seen: everything goes to a fresh temporary
name in the target folder, then is renamed (staged, write_atomic). Every writer in carseg and
the exporter goes through here.

The temporary file is created exclusively under an unpredictable name (mkstemp: O_EXCL, so a
planted symlink is never followed), written through that descriptor where carseg writes it,
flushed to disk, and only then renamed. With `overwrite=False` the final name is taken only if
nothing is there (a hard link, which fails on an existing name): a run never replaces a file
it did not create."""

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


class OutputExists(CarsegError, FileExistsError):
    """The final name is taken, and the caller asked not to replace it."""


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(tmp: Path, final: Path, overwrite: bool = True) -> None:
    """Give a temporary file ordinary permissions (mkstemp makes it 0600), flush it, and
    rename it to `final`; without `overwrite`, refuse (OutputExists) a name that is taken."""
    tmp.chmod(0o666 & ~_umask())
    _fsync(tmp)
    if overwrite:
        tmp.replace(final)
        return
    try:
        os.link(tmp, final)  # atomic: fails if `final` exists, whatever it is
    except FileExistsError:
        raise OutputExists(f"{final}: exists, and this run did not write it; not replaced "
                           f"(remove it, write elsewhere, or pass --overwrite)") from None
    tmp.unlink()


def temp_path(out: Path, final_name: str) -> Path:
    """A fresh temporary name in `out` (same file system, so the final rename is atomic)."""
    # keep the extension last: some writers insist on it (aoti_compile_and_package: .pt2)
    fd, tmp = tempfile.mkstemp(prefix=f".{final_name}.", suffix=f".tmp{Path(final_name).suffix}",
                               dir=out)
    os.close(fd)
    return Path(tmp)


@contextlib.contextmanager
def staged(out: Path, final_name: str, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path for a writer that takes a path; on success publish it as
    out/final_name, else delete it."""
    tmp = temp_path(out, final_name)
    try:
        yield tmp
        if not tmp.is_file() or tmp.stat().st_size == 0:
            raise CarsegError(f"{out / final_name}: nothing was written")
        publish(tmp, out / final_name, overwrite)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: Path, data: bytes | str, overwrite: bool = True) -> None:
    """Write `data` (text as UTF-8) to a fresh temporary name beside `path`, through the
    descriptor that created it, then publish it as `path` (see publish)."""
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}",
                                dir=path.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        publish(tmp, path, overwrite)
    finally:
        tmp.unlink(missing_ok=True)
