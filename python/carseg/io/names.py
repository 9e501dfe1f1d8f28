"""What a run reads and what it names its outputs, as libcarseg's pipeline.h does:
NAME_mask.png, NAME_cutout.jpg (or .png, transparent) and NAME_alpha.png (the alpha matte) for
photo NAME.ext."""

from __future__ import annotations

from pathlib import Path

from carseg.io.encode import cutout_suffix, parse_background

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
OUTPUT_STEMS = ("_mask", "_cutout", "_alpha")


def mask_path(output: Path, photo: Path) -> Path:
    return output / f"{photo.stem}_mask.png"


def cutout_path(output: Path, photo: Path, background: str) -> Path:
    """NAME_cutout.png for a transparent cutout, NAME_cutout.jpg for any other background."""
    return output / f"{photo.stem}_cutout{cutout_suffix(background)}"


def matte_path(output: Path, photo: Path) -> Path:
    return output / f"{photo.stem}_alpha.png"


def outputs_for(photo: Path, output: Path, cutout: str, matte: bool = False) -> list[Path]:
    """Every file a run writes for `photo`; `cutout` is a background or none."""
    outs = [mask_path(output, photo)]
    if parse_background(cutout, allow_none=True, field="cutout") != "none":
        outs.append(cutout_path(output, photo, cutout))
    if matte:
        outs.append(matte_path(output, photo))
    return outs


def is_output_name(path: Path) -> bool:
    return path.stem.endswith(OUTPUT_STEMS)


def list_photos(inputs: list[Path], output: Path | None = None
                ) -> tuple[list[Path], list[dict[str, str]]]:
    """Photos named or found (not recursively, sorted) in folders; missing inputs are failures.

    In a folder that is also the output folder, the run's own outputs (`*_mask.*`,
    `*_cutout.*`) are not photos: a second run must not segment the first run's cutouts. Two
    photos with one stem would write the same outputs: the later one is a failure. A photo
    keeps the name the user gave it (a symbolic link names its outputs, not its target); a
    file that is not a regular one (a pipe, a device) is a failure, never opened.
    """
    out_dir = output.resolve() if output is not None else None
    photos, failed = [], []
    for p in inputs:
        if p.is_dir():
            ours = out_dir is not None and p.resolve() == out_dir
            photos += sorted(q for q in p.iterdir()
                             if q.is_file() and q.suffix.lower() in PHOTO_SUFFIXES
                             and not (ours and is_output_name(q)))
        elif p.is_file():
            photos.append(p)
        elif p.exists():
            failed.append({"path": str(p), "reason": "not a regular file (a pipe, device or "
                                                     "socket)"})
        else:
            failed.append({"path": str(p), "reason": "no such file or folder"})
    stems: dict[str, Path] = {}
    unique = []
    for p in photos:
        if p.stem in stems:
            failed.append({"path": str(p), "reason": f"same name as {stems[p.stem]}; "
                           f"outputs would collide"})
            continue
        stems[p.stem] = p
        unique.append(p.absolute())
    return unique, failed
