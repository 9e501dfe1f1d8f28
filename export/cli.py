"""`python -m export trace|onnx|aoti|all|verify`: artifacts and their manifest from a logdir.

Library code raises; only this module prints errors and picks exit codes:
0 success, 1 verification failed (an artifact missed its tolerance or its sha256),
2 bad usage, bad input or an unusable model.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from carseg import __version__
from carseg.cli import run_command, use_help_formatter
from carseg.errors import CarsegError
from carseg.io.files import write_atomic

log = logging.getLogger("export")

EXIT_OK, EXIT_VERIFY_FAILED, EXIT_USAGE = 0, 1, 2
ALL_FORMATS = ("torchscript", "onnx", "aoti")
_FORMAT_ALIASES = {"torchscript": "torchscript", "ts": "torchscript", "trace": "torchscript",
                   "onnx": "onnx", "aoti": "aoti", "pt2": "aoti"}


def _log_flags(p: argparse.ArgumentParser, default) -> None:
    p.add_argument("-v", "--verbose", action="store_true", default=default,
                   help="debug logging")
    p.add_argument("-q", "--quiet", action="store_true", default=default,
                   help="warnings and errors only")


def _common(p: argparse.ArgumentParser, *, onnx: bool = False, ts: bool = False) -> None:
    _log_flags(p, argparse.SUPPRESS)
    p.add_argument("--logdir", type=Path, required=True,
                   help="Catalyst logdir (holds config.resolved.yml and checkpoints/)")
    p.add_argument("--out", type=Path, default=None,
                   help="artifact folder (default: LOGDIR/export); manifest.json goes there too")
    p.add_argument("--checkpoint", default="best",
                   help="best, last, or a path to a state dict (default: best)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: cpu)")
    p.add_argument("--precision", choices=("fp32", "fp16"), default="fp32",
                   help="fp16 artifacts take and return float16 tensors (manifest input.dtype "
                        "says so); a folder holds one precision")
    if ts:
        p.add_argument("--method", choices=("trace", "script"), default="trace",
                       help="torch.jit.trace (default) or torch.jit.script")
    if onnx:
        p.add_argument("--opset", type=int, default=18, help="ONNX opset (default: 18)")
        p.add_argument("--exporter", choices=("dynamo", "torchscript"), default="dynamo",
                       help="torch.onnx exporter: dynamo (torch.export, default) or the legacy "
                            "TorchScript-based one")
        p.add_argument("--simplify", action="store_true",
                       help="run onnxsim on the graph if installed (skipped with a note if not)")


def _export_kwargs(args: argparse.Namespace) -> dict:
    kw = {"checkpoint": args.checkpoint, "device": args.device, "precision": args.precision}
    for name in ("method", "opset", "exporter", "simplify"):
        if hasattr(args, name):
            kw[name] = getattr(args, name)
    return kw


def _summary(manifest, fmt: str, out: Path) -> None:
    a = manifest.artifacts[fmt]
    sys.stdout.write(f"wrote {out / a['file']} ({a['bytes'] / 1e6:.1f} MB, {a['precision']}, "
                     f"{a['export_seconds']:.1f} s) and {out / 'manifest.json'}\n")


def _out(args: argparse.Namespace) -> Path:
    from export.api import default_out

    return (args.out if args.out is not None else default_out(args.logdir.resolve())).absolute()


def cmd_export(args: argparse.Namespace) -> int:
    from export.api import export_artifact

    manifest = export_artifact(args.format, args.logdir, args.out, **_export_kwargs(args))
    _summary(manifest, args.format, _out(args))
    return EXIT_OK


def _tolerances(args: argparse.Namespace):
    from export.verify import DEFAULT_TOLERANCES, Tolerance

    fp32, fp16 = DEFAULT_TOLERANCES["fp32"], DEFAULT_TOLERANCES["fp16"]
    return {"fp32": Tolerance(args.atol if args.atol is not None else fp32.max_abs_diff,
                              args.min_iou if args.min_iou is not None else fp32.mask_iou),
            "fp16": Tolerance(args.fp16_atol if args.fp16_atol is not None
                              else fp16.max_abs_diff,
                              args.fp16_min_iou if args.fp16_min_iou is not None
                              else fp16.mask_iou),
            "int8": Tolerance(None, args.int8_min_iou if args.int8_min_iou is not None
                              else DEFAULT_TOLERANCES["int8"].mask_iou)}


def _run_verify(folder: Path, args: argparse.Namespace) -> int:
    from export.verify import format_table, verify

    t0 = time.monotonic()
    report = verify(folder, images=args.images, logdir=args.logdir,
                    batches=tuple(args.batches), tolerances=_tolerances(args),
                    record=not args.no_record)
    sys.stdout.write(format_table(report))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(args.json, json.dumps(report, indent=2, default=str) + "\n")
        log.info("verify: report written to %s", args.json)
    failed = [r["artifact"] for r in report["artifacts"] if not r["passed"]]
    log.info("verify: %s in %.1f s", "all passed" if not failed else f"FAILED: {failed}",
             time.monotonic() - t0)
    return EXIT_OK if not failed else EXIT_VERIFY_FAILED


def cmd_verify(args: argparse.Namespace) -> int:
    return _run_verify(args.dir, args)


def cmd_int8(args: argparse.Namespace) -> int:
    from export.quantize import quantize_int8

    entry = quantize_int8(args.dir, args.calibration, num=args.num, method=args.method)
    sys.stdout.write(f"wrote {args.dir / entry['file']} ({entry['bytes'] / 1e6:.1f} MB, int8, "
                     f"calibrated on {entry['calibration']['images']} photo(s), "
                     f"{entry['export_seconds']:.1f} s)\n")
    if args.skip_verify:
        return EXIT_OK
    return _run_verify(args.dir, args)


def _parse_formats(text: str) -> list[str]:
    out = []
    for part in (p.strip().lower() for p in text.split(",") if p.strip()):
        if part not in _FORMAT_ALIASES:
            raise ValueError(f"--formats: unknown format {part!r}; expected a comma-separated "
                             f"subset of {','.join(ALL_FORMATS)}")
        if _FORMAT_ALIASES[part] not in out:
            out.append(_FORMAT_ALIASES[part])
    if not out:
        raise ValueError("--formats: expected at least one format")
    return out


def cmd_all(args: argparse.Namespace) -> int:
    from export.api import export_artifact

    fmts = _parse_formats(args.formats)
    out = _out(args)
    failures: list[str] = []
    for i, fmt in enumerate(fmts, 1):
        log.info("[%d/%d] %s", i, len(fmts), fmt)
        try:
            manifest = export_artifact(fmt, args.logdir, out, **_export_kwargs(args))
        except (CarsegError, ValueError, FileNotFoundError, OSError) as e:
            if fmt != "aoti":  # only the compiler may crash and spare the others
                raise
            sys.stderr.write(f"export: error: {fmt}: {e}\n")
            failures.append(fmt)
            continue
        _summary(manifest, fmt, out)
    rc = EXIT_OK
    if len(failures) == len(fmts):
        return EXIT_USAGE
    if not args.skip_verify:
        rc = _run_verify(out, args)
    if failures:
        sys.stderr.write(f"export: error: not written: {', '.join(failures)} (see above); the "
                         f"other artifacts are in {out}\n")
        return EXIT_USAGE
    return rc


def _verify_options(p: argparse.ArgumentParser, dir_arg: bool) -> None:
    if dir_arg:
        _log_flags(p, argparse.SUPPRESS)
        p.add_argument("dir", type=Path, help="artifact folder holding manifest.json")
        p.add_argument("--logdir", type=Path, default=None,
                       help="the training logdir (default: source.logdir in the manifest)")
    p.add_argument("--images", type=Path, default=None,
                   help="CSV with an `image` column, or a folder of photos (default: the run's "
                        "valid CSV); the first 4 are used")
    p.add_argument("--batches", type=lambda s: [int(v) for v in s.split(",")], default=[1, 4],
                   help="batch sizes to check, comma-separated (default: 1,4)")
    p.add_argument("--json", type=Path, default=None, help="write the report as JSON here")
    p.add_argument("--atol", type=float, default=None,
                   help="fp32: max |diff| of logits allowed, per unit of the case's logit "
                        "scale max(1, max |logit|) (default: 1e-4)")
    p.add_argument("--min-iou", type=float, default=None,
                   help="fp32: lowest mask IoU allowed (default: 0.999)")
    p.add_argument("--fp16-atol", type=float, default=None,
                   help="fp16: max |diff| of logits allowed, per unit of the logit scale "
                        "(default: not checked)")
    p.add_argument("--fp16-min-iou", type=float, default=None,
                   help="fp16: lowest mask IoU allowed (default: 0.995)")
    p.add_argument("--int8-min-iou", type=float, default=None,
                   help="int8: lowest mask IoU against eager fp32 on the photos allowed "
                        "(default: 0.99; int8 is checked on photos only)")
    p.add_argument("--no-record", action="store_true",
                   help="do not write the parity into manifest.json")


def cmd_aoti_worker(args: argparse.Namespace) -> int:
    import faulthandler

    from export.api import aoti_worker

    # A crash in the compiler or in the package it made (seen on the GPU image, fp32 and fp16:
    # SIGSEGV after the compile) then leaves the Python stacks in the parent's message.
    faulthandler.enable(file=sys.stderr, all_threads=False)
    info = aoti_worker(args.logdir, args.checkpoint, args.package, args.device, args.precision)
    write_atomic(args.result, json.dumps(info))
    return EXIT_OK


def cmd_triton(args: argparse.Namespace) -> int:
    from export.triton import build_repository

    names = build_repository(args.artifacts, args.out, max_batch=args.max_batch,
                             instances=args.instances, kind=args.kind,
                             require_verified=not args.allow_unverified)
    sys.stdout.write(f"wrote Triton repository {args.out.absolute()} ({', '.join(names)}); "
                     f"start it with: tritonserver --model-repository={args.out.absolute()}\n")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m export",
        description="Export a trained carseg model (TorchScript, ONNX, AOTInductor) with a "
                    "manifest.json, and verify the artifacts against eager PyTorch.",
        epilog="example: python -m export all --logdir logs/demo --out artifacts")
    p.add_argument("--version", action="version", version=f"carseg export {__version__}")
    _log_flags(p, False)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    # One subcommand a format: (name, format, help, description, example, _common options).
    formats = [
        ("trace", "torchscript", "write model.torchscript.pt (frozen TorchScript)",
         "Write a frozen TorchScript model: float [N,3,H,W] normalized in, logits [N,1,H,W] "
         "out, any N, H and W multiples of 32.",
         "python -m export trace --logdir logs/demo --out artifacts", {"ts": True}),
        ("onnx", "onnx", "write model.onnx (dynamic batch and H/W)",
         "Write model.onnx: input `input`, output `logits`, dynamic batch and H/W, checked "
         "with onnx.checker (full_check).",
         "python -m export onnx --logdir logs/demo --out artifacts --opset 18", {"onnx": True}),
        ("aoti", "aoti", "write model.pt2 (torch.export + AOTInductor)",
         "Write model.pt2 with torch.export (dynamic batch and H/W) and AOTInductor. The "
         "compile runs in a child process, so a compiler crash is reported, not fatal.",
         "python -m export aoti --logdir logs/demo --out artifacts --device cuda "
         "--precision fp16", {}),
    ]
    for name, fmt, help_, description, example, options in formats:
        s = sub.add_parser(name, help=help_, description=description,
                           epilog=f"example: {example}")
        _common(s, **options)
        if fmt == "aoti":
            s.add_argument("--timeout", dest="aoti_timeout_s", type=float, default=1800.0,
                           help="stop the compile after this many seconds (default: 1800)")
        s.set_defaults(func=cmd_export, format=fmt)

    s = sub.add_parser("all", help="export several formats, then verify them",
                       description="Export the formats named by --formats, then run verify.",
                       epilog="example: python -m export all --logdir logs/demo --out "
                              "artifacts --formats torchscript,onnx")
    _common(s, onnx=True, ts=True)
    s.add_argument("--formats", default=",".join(ALL_FORMATS),
                   help="comma-separated subset of torchscript,onnx,aoti (default: all three)")
    s.add_argument("--skip-verify", action="store_true", help="export only")
    _verify_options(s, dir_arg=False)
    s.set_defaults(func=cmd_all)

    s = sub.add_parser("int8", help="write model.int8.onnx (static int8 quantization), verify",
                       description="Quantize the folder's fp32 model.onnx with ONNX Runtime's "
                                   "static quantization (QDQ; uint8 activations, int8 weights "
                                   "per channel), calibrated on photos named here, preprocessed "
                                   "as the manifest says; record it (with its calibration) as "
                                   "artifacts.onnx_int8, then verify the folder: int8 passes "
                                   "when its masks on real photos keep --int8-min-iou against "
                                   "eager fp32. carseg_infer runs it with --precision int8.",
                       epilog="example: python -m export int8 artifacts --calibration "
                              "data/dataset_train.csv --num 32")
    _verify_options(s, dir_arg=True)
    s.add_argument("--calibration", type=Path, required=True,
                   help="training photos to calibrate on: a CSV with an `image` column, or a "
                        "folder")
    s.add_argument("--num", type=int, default=32,
                   help="calibrate on the first N photos (default: 32)")
    s.add_argument("--method", choices=("minmax", "entropy", "percentile"), default="minmax",
                   help="how activation ranges are chosen (default: minmax)")
    s.add_argument("--skip-verify", action="store_true", help="quantize only")
    s.set_defaults(func=cmd_int8)

    s = sub.add_parser("verify", help="check every artifact of a folder against eager PyTorch",
                       description="Run every artifact on random inputs and real photos at "
                                   "batch 1 and 4 and two resolutions, against eager PyTorch "
                                   "rebuilt from the logdir; record parity in manifest.json. "
                                   "Exit 1 when an artifact misses its tolerance or its sha256.",
                       epilog="example: python -m export verify artifacts --json parity.json")
    _verify_options(s, dir_arg=True)
    s.set_defaults(func=cmd_verify)

    s = sub.add_parser("triton", help="write a Triton model repository from verified artifacts",
                       description="Write a Triton Inference Server model repository: the ONNX "
                                   "model for the onnxruntime backend, the TorchScript model "
                                   "for pytorch_libtorch, each with its config.pbtxt, the "
                                   "manifest and a README. Needs the `scale` extra.",
                       epilog="example: python -m export triton --artifacts artifacts --out "
                              "triton_repo --max-batch 32 --kind gpu")
    _log_flags(s, argparse.SUPPRESS)
    s.add_argument("--artifacts", type=Path, required=True, help="verified artifact folder")
    s.add_argument("--out", type=Path, required=True, help="repository folder to write")
    s.add_argument("--max-batch", type=int, default=16, help="max_batch_size (default: 16)")
    s.add_argument("--instances", type=int, default=1, help="instance_group count")
    s.add_argument("--kind", choices=("gpu", "cpu"), default="gpu", help="instance kind")
    s.add_argument("--allow-unverified", action="store_true",
                   help="take artifacts that verify has not passed")
    s.set_defaults(func=cmd_triton)

    return use_help_formatter(p)


def build_worker_parser() -> argparse.ArgumentParser:
    """The child process of `aoti` (not a user command: kept out of the help)."""
    s = argparse.ArgumentParser(prog="python -m export aoti-worker")
    s.add_argument("command", choices=("aoti-worker",))
    s.add_argument("-v", "--verbose", action="store_true")
    s.add_argument("-q", "--quiet", action="store_true")
    s.add_argument("--logdir", type=Path, required=True)
    s.add_argument("--checkpoint", type=Path, required=True)
    s.add_argument("--device", default="cpu")
    s.add_argument("--precision", default="fp32")
    s.add_argument("--package", type=Path, required=True)
    s.add_argument("--result", type=Path, required=True)
    s.set_defaults(func=cmd_aoti_worker)
    return s


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    worker = bool(argv) and argv[0] == "aoti-worker"
    parser = build_worker_parser() if worker else build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    prefix = "aoti-worker: " if args.command == "aoti-worker" else ""
    # our loggers at the chosen level; other libraries' (onnxscript's optimizer is chatty)
    # only from warnings up, unless --verbose
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format=prefix + "%(message)s", stream=sys.stderr, force=True)
    for name in ("export", "carseg"):
        logging.getLogger(name).setLevel(level)
    return run_command("aoti-worker" if args.command == "aoti-worker" else "export", args)
