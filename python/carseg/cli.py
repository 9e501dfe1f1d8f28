"""The `carseg` command: synth, prepare, train.

Library code raises; only this module prints errors and picks exit codes:
0 success, 1 some inputs failed, 2 bad usage, bad data or an unusable model.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from carseg import __version__
from carseg.errors import CarsegError

log = logging.getLogger("carseg")

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2
DEFAULT_CONFIG = Path(__file__).parent / "configs" / "train.yml"


def _progress(label: str):
    tty = sys.stderr.isatty()
    t0 = time.monotonic()

    def show(done: int, total: int) -> None:
        if tty:
            sys.stderr.write(f"\r{label}: {done}/{total} ({time.monotonic() - t0:.1f} s)")
            if done == total:
                sys.stderr.write("\n")
            sys.stderr.flush()
        elif done == total or done % max(1, total // 10) == 0:
            log.info("%s: %d/%d (%.1f s)", label, done, total, time.monotonic() - t0)

    return show


def _print_failures(command: str, failed: list[dict[str, str]]) -> None:
    """One line a failed input: `carseg CMD: error: <file>: <reason>`."""
    for f in failed:
        msg = f["reason"] if f["reason"].startswith(f["path"]) else f"{f['path']}: {f['reason']}"
        sys.stderr.write(f"carseg {command}: error: {msg}\n")


def cmd_synth(args: argparse.Namespace) -> int:
    from carseg.datasets.synth import parse_size, write_dataset

    size = parse_size(args.size)
    t0 = time.monotonic()
    written = write_dataset(args.out, args.num, size=size, seed=args.seed, views=args.views,
                            progress=_progress("synth"))
    log.info("wrote %d photos and masks of %dx%d (HxW) to %s in %.1f s", len(written), *size,
             args.out, time.monotonic() - t0)
    return EXIT_OK


def cmd_prepare(args: argparse.Namespace) -> int:
    from carseg.datasets.prepare import prepare

    train_csv, valid_csv = prepare(args.datapath, valid_size=args.valid_size, seed=args.seed,
                                   out=args.out)
    log.info("wrote %s and %s", train_csv, valid_csv)
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    from carseg.train.run import prepare_config, run_config

    config = prepare_config(args.config, logdir=args.logdir, data=args.data, epochs=args.epochs,
                            image_size=args.image_size)
    if args.dry_run:
        import yaml

        sys.stdout.write(yaml.safe_dump(config, sort_keys=False))
        return EXIT_OK
    t0 = time.monotonic()
    logdir = run_config(config, overwrite=args.overwrite)
    summary = logdir / "summary.json"
    if summary.is_file():
        import json

        valid = json.loads(summary.read_text())["valid"]
        log.info("best valid: %s", ", ".join(f"{k} {v:.4f}" for k, v in valid.items()))
    log.info("trained in %.0f s; logdir %s", time.monotonic() - t0, logdir)
    return EXIT_OK


def cmd_gallery(args: argparse.Namespace) -> int:
    from carseg.apps import gallery

    rows = gallery.collect(args.csv, masks=args.masks, model=args.model, num=args.num)
    html_path = args.out.with_suffix(".html")
    gallery.write(rows, args.out, html_path, title=args.title)
    log.info("wrote %s and %s; %s", args.out, html_path, gallery.describe_dice(rows))
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from carseg.apps.serve import serve_forever

    serve_forever(args.model, host=args.host, port=args.port, backend=args.backend,
                  device=args.device, replicas=args.replicas, max_batch=args.max_batch,
                  batch_wait_ms=args.batch_wait_ms)
    return EXIT_OK


def cmd_batch(args: argparse.Namespace) -> int:
    from carseg.apps.batch import Report, run_batch, write_report

    try:
        report = run_batch(args.inputs, args.model, args.output, address=args.address,
                           workers=args.workers, batch_size=args.batch_size, device=args.device,
                           cutout=args.cutout, backend=args.backend, decode=args.decode,
                           handle_signals=True)
    except BaseException as e:  # the report is written whatever stops the run
        if args.report:
            write_report(Report(error=f"{type(e).__name__}: {e}"), args.report)
        raise
    if args.report:
        write_report(report, args.report)
    _print_failures("batch", report.failed)
    r = report.to_json()
    log.info("done %d, skipped %d (already written), failed %d; %.2f images/s", len(report.done),
             len(report.skipped), len(report.failed), r["images_per_s"])
    return EXIT_SOME_FAILED if report.failed else EXIT_OK


def cmd_cutout(args: argparse.Namespace) -> int:
    from carseg.apps.cutout import Outputs, cutout_stream, run_cutout
    from carseg.runtime.predictor import check_decode, describe, open_predictor

    outputs = Outputs(background=None if args.mask_only else args.background, crop=args.crop,
                      matte=args.matte, quality=args.quality)
    streaming = str(args.output) == "-" or [str(p) for p in args.inputs] == ["-"]
    if streaming and ([str(p) for p in args.inputs] != ["-"] or str(args.output) != "-"):
        raise ValueError("stdin/stdout: use them together, for one photo: "
                         "carseg cutout - --model M --output - < car.jpg > cutout.jpg")
    if streaming and sys.stdout.isatty():
        raise ValueError("--output -: stdout is a terminal; redirect it to a file or a pipe")
    check_decode(args.decode, args.backend, args.device)
    if streaming and args.decode == "gpu":
        raise ValueError("--decode gpu is for files and folders (libcarseg's pipeline); a photo "
                         "on stdin is decoded on the CPU")
    predictor = open_predictor(args.model, backend=args.backend, device=args.device,
                               precision=args.precision, threshold=args.threshold,
                               refine=not args.no_refine, softness=args.softness)
    log.info("carseg cutout: %s, JPEG decoding on the %s", describe(predictor, args.backend),
             args.decode.upper())
    if streaming:
        from carseg.io.images import MAX_FILE_BYTES

        data = sys.stdin.buffer.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            raise ValueError(f"<stdin>: over {MAX_FILE_BYTES} bytes; refused")
        sys.stdout.buffer.write(cutout_stream(data, predictor, outputs))
        sys.stdout.buffer.flush()
        return EXIT_OK
    report = run_cutout(args.inputs, predictor, args.output, workers=args.workers,
                        overwrite=args.overwrite, outputs=outputs, decode=args.decode)
    _print_failures("cutout", report.failed)
    log.info("%d image(s) cut out, %d failed, %.2f images/s (%s backend) -> %s",
             len(report.done), len(report.failed), report.images_per_s, args.backend,
             args.output)
    return EXIT_SOME_FAILED if report.failed else EXIT_OK


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's help says its default (unless it has none or names it already); epilogs
    keep their line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_ = action.help or ""
        default = action.default
        if (not action.option_strings or "default" in help_ or default is None
                or default is False or default == argparse.SUPPRESS):
            return help_
        if isinstance(default, (list, tuple)):
            default = " ".join(str(d) for d in default)
        return f"{help_} (default: {str(default).replace('%', '%%')})"


def use_help_formatter(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """HelpFormatter for `parser` and each of its subcommands."""
    parser.formatter_class = HelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                sub.formatter_class = HelpFormatter
    return parser


def _model_args(s: argparse.ArgumentParser, backends: list[str], folders: bool = True,
                stdio: bool = False) -> None:
    """What the commands that run an artifact folder share: inputs, model, output, backend,
    device."""
    if folders:
        s.add_argument("inputs", type=Path, nargs="+", metavar="INPUT",
                       help="photos or folders" + (" (or -: one photo on stdin)" if stdio
                                                   else ""))
    s.add_argument("--model", type=Path, required=True, help="artifact folder (manifest.json)")
    if folders:
        s.add_argument("--output", type=Path, required=True,
                       help="folder for masks and cutouts" + (" (or -: stdout, with input -)"
                                                              if stdio else ""))
    s.add_argument("--backend", choices=backends, default="torchscript",
                   help="native: the C++ core (carseg._native), the same pipeline as "
                        "carseg_infer, where it is built; the others run the artifact in "
                        "Python, which works wherever the package installs")
    s.add_argument("--device", default="cpu", help="cpu or cuda")


def _decode_arg(s: argparse.ArgumentParser) -> None:
    s.add_argument("--decode", choices=["cpu", "gpu"], default="cpu",
                   help="where JPEGs are decoded: gpu decodes them with nvJPEG on the CUDA "
                        "device and the model reads them there (--backend native --device "
                        "cuda; other formats, CMYK and damaged JPEGs are decoded on the CPU)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="carseg", description="Car segmentation: data, training, and (see `python -m "
        "export`, carseg_infer) deployment.",
        epilog="example: carseg synth --out data/synth --num 400 && "
               "carseg prepare --datapath data/synth && carseg train")
    p.add_argument("--version", action="version", version=f"carseg {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("synth", help="write a Carvana-like data set offline",
                       epilog="example: carseg synth --out data/synth --num 400 --size 640x960")
    s.add_argument("--out", type=Path, required=True, help="data set folder to write")
    s.add_argument("--num", type=int, required=True, help="number of photos")
    s.add_argument("--size", default="640x960", help="photo size HxW (Carvana: 1280x1918)")
    s.add_argument("--seed", type=int, default=0, help="same seed, same data set")
    s.add_argument("--views", type=int, default=8, help="photos per car, around a turntable")
    s.set_defaults(func=cmd_synth)

    s = sub.add_parser("prepare", help="pair photos with masks; write train/valid CSVs",
                       epilog="example: carseg prepare --datapath data/synth --valid-size 0.2")
    s.add_argument("--datapath", type=Path, required=True,
                   help="folder with train/ and train_masks/ (Carvana's layout)")
    s.add_argument("--valid-size", type=float, default=0.2, help="share of cars for validation")
    s.add_argument("--seed", type=int, default=42,
                   help="seed of the split: the same seed puts the same cars in valid")
    s.add_argument("--out", type=Path, default=None, help="where the CSVs go (default: DATAPATH)")
    s.set_defaults(func=cmd_prepare)

    s = sub.add_parser("train", help="train from a Catalyst 22 config",
                       epilog="example: carseg train --config python/carseg/configs/train.yml "
                              "--epochs 3 --logdir logs/try")
    s.add_argument("--config", "-C", type=Path, nargs="+", default=[DEFAULT_CONFIG],
                   help="YAML config(s), merged left to right (default: the demo's train.yml)")
    s.add_argument("--logdir", type=Path, help="override run.logdir")
    s.add_argument("--data", type=Path,
                   help="folder holding dataset_train.csv and dataset_valid.csv")
    s.add_argument("--epochs", type=int, help="override num_epochs")
    s.add_argument("--image-size", type=int, help="override image_size (multiple of 32)")
    s.add_argument("--overwrite", action="store_true",
                   help="replace a previous run in the logdir (default: refuse to touch it)")
    s.add_argument("--dry-run", action="store_true", help="print the resolved config and stop")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("gallery", help="photo, true mask, predicted mask + Dice, cutout",
                       epilog="example: carseg gallery --csv demo/csv/dataset_valid.csv "
                              "--masks demo/cutouts --out docs/gallery.png")
    s.add_argument("--csv", type=Path, required=True, help="CSV of held-out photos and masks")
    s.add_argument("--masks", type=Path, help="folder of <stem>_mask.png (carseg_infer output)")
    s.add_argument("--model", type=Path, help="artifact folder, for photos without a mask file")
    s.add_argument("--num", type=int, default=12, help="photos to show")
    s.add_argument("--out", type=Path, required=True, help="PNG to write (and .html beside it)")
    s.add_argument("--title", default="", help="a line of context for the HTML page")
    s.set_defaults(func=cmd_gallery)

    s = sub.add_parser("cutout", help="remove the background: masks and cutouts at full size",
                       epilog="examples:\n  carseg cutout photos/ --model demo/artifacts "
                              "--output cutouts/ --background transparent\n"
                              "  carseg cutout - --model demo/artifacts --output - --background "
                              "'#2060c0' --crop 20 < car.jpg > car_cutout.jpg")
    _model_args(s, ["native", "torchscript", "onnx", "aoti"], stdio=True)
    s.add_argument("--precision", choices=["auto", "fp32", "fp16", "int8"], default="auto",
                   help="auto (default): int8 on the CPU where the folder has a verified "
                        "int8 model and the backend runs it (native, onnx), else fp32; fp16 "
                        "needs CUDA and the native backend; int8 runs the folder's "
                        "model.int8.onnx (python -m export int8) on the CPU, with the native "
                        "or the onnx backend")
    s.add_argument("--threshold", type=float, help="override the manifest's threshold")
    s.add_argument("--background", default="white", metavar="B",
                   help="what is behind the car: white, #RRGGBB or an image file (resized to "
                        "each photo): NAME_cutout.jpg; transparent: NAME_cutout.png with the "
                        "alpha matte")
    s.add_argument("--crop", type=int, metavar="MARGIN",
                   help="crop the cutout to the car's box grown by MARGIN pixels a side")
    s.add_argument("--matte", action="store_true",
                   help="also write NAME_alpha.png, the alpha matte (0 background, 255 car); "
                        "with --output -, write it instead of the cutout")
    s.add_argument("--mask-only", action="store_true", help="masks only, no cutouts")
    s.add_argument("--quality", type=int, default=95, help="JPEG quality of the cutouts, 1-100")
    s.add_argument("--no-refine", action="store_true",
                   help="the model's mask resized, without the manifest's full-resolution "
                        "refinement (output.refine, on by default where the manifest has it)")
    s.add_argument("--softness", type=float,
                   help="width of the matte's soft edge in (0, 1] (default: the manifest's)")
    s.add_argument("--workers", type=int, default=2, help="decode/encode threads")
    _decode_arg(s)
    s.add_argument("--overwrite", action="store_true",
                   help="replace outputs already in the output folder (default: a photo whose "
                        "outputs exist is refused; nothing there is replaced)")
    s.set_defaults(func=cmd_cutout)

    s = sub.add_parser("serve", help="HTTP serving on Ray Serve (extra `scale`)",
                       epilog="example: carseg serve --model demo/artifacts --replicas 2 && "
                              "curl --data-binary @car.jpg -H 'Content-Type: image/jpeg' "
                              "http://127.0.0.1:8000/v1/segment > mask.png")
    _model_args(s, ["native", "torchscript", "onnx"], folders=False)
    s.add_argument("--replicas", type=int, default=1, help="replicas, one predictor each")
    s.add_argument("--max-batch", type=int, default=8, help="largest dynamic batch")
    s.add_argument("--batch-wait-ms", type=float, default=10.0,
                   help="how long a replica waits to fill a batch")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on")
    s.add_argument("--port", type=int, default=8000, help="port to listen on")
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("batch", help="batch inference over folders on Ray Data (extra `scale`)",
                       epilog="example: carseg batch photos/ --model demo/artifacts --output "
                              "out/ --workers 2 --report out/report.json")
    _model_args(s, ["native", "torchscript", "onnx"])
    s.add_argument("--address", default="local",
                   help="local (default), auto, or ray://HOST:10001 for a cluster")
    s.add_argument("--workers", type=int, default=1, help="predictor actors")
    s.add_argument("--batch-size", type=int, default=4, help="photos per predictor call")
    s.add_argument("--cutout", default="white", metavar="B",
                   help="the cutout written beside each mask, by what is behind the car: white, "
                        "#RRGGBB or an image file (resized to each photo; readable where the "
                        "workers run): NAME_cutout.jpg; transparent: NAME_cutout.png with the "
                        "alpha matte; none: masks only")
    _decode_arg(s)
    s.add_argument("--report", type=Path, help="JSON report: done, skipped, failed with reasons")
    s.set_defaults(func=cmd_batch)
    return use_help_formatter(p)


def _message(e: BaseException) -> str:
    """The useful line of an error; DataLoader workers wrap ours in a traceback text."""
    text = str(e)
    if "Original Traceback" in text:
        last = [ln for ln in text.strip().splitlines() if ln.strip()][-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return text


def run_command(prog: str, args: argparse.Namespace) -> int:
    """Call `args.func(args)`: what it raises becomes one line `PROG: error: <reason>` and exit
    2, Ctrl-C exit 130. The one place where carseg's commands (and the exporter's) turn
    library errors into words; library code only raises."""
    try:
        return int(args.func(args))
    except (CarsegError, ValueError, FileNotFoundError, OSError) as e:
        sys.stderr.write(f"{prog}: error: {_message(e)}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted\n")
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # force: each call (tests call main() many times) logs to the current stderr
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(message)s", stream=sys.stderr, force=True)
    return run_command(f"carseg {args.command}", args)


if __name__ == "__main__":
    sys.exit(main())
