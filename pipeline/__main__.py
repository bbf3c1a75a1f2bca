"""Command line: ``python -m pipeline run|status|path --config FILE [--set section.key=value ...]``,
``python -m pipeline verify DIR``."""

from __future__ import annotations

import argparse
import contextlib
import sys

from core.errors import PipelineError, causes, disk_full, one_line, show
from pipeline import console
from pipeline.interrupt import RUN_AGAIN, Interrupted, terminate_raises


def _prog() -> str:
    """How the user started us: the installed ``mobile-export`` or ``python -m pipeline``."""
    import os

    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return name if name and not name.endswith(".py") and name != "-c" else "python -m pipeline"


def _parser() -> argparse.ArgumentParser:
    from exporters import registry

    rows = registry.table()
    width = max(len(row["format"]) for row in rows)  # the longest name sets the column (tflite-pruned-int8)
    formats = "\n".join(f"  {row['format']:<{width}} {row['runtime']:<12} {row['description']}" for row in rows)
    parser = argparse.ArgumentParser(
        prog=_prog(),
        description="Fine-tune, export and validate a mobile image classifier.",
        epilog=f"export formats (export.formats):\n{formats}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verbose = "show everything TensorFlow, absl and the converters print (quiet by default; their lines go to " \
              "build/<name>/tool-output.log)"
    parser.add_argument("--verbose", action="store_true", help=verbose)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("run", "run every stage that is not up to date"), ("status", "show which stages are up to date"),
                       ("path", "print the build folder of this config (build/<name>)")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--config", required=True, help="pipeline YAML file, e.g. configs/quickstart.yaml, or the "
                       "name of a shipped one (quickstart, flowers, example)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override one config key (repeatable), e.g. --set train.head_epochs=3")
        p.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=verbose)
        if name == "run":
            p.add_argument("--force", action="append", default=[], metavar="STAGE",
                           help="run this stage even if it is up to date (repeatable), e.g. --force bench")
            p.add_argument("--through", metavar="STAGE",
                           help="stop after this stage, e.g. --through finetune to train without exporting")
            p.add_argument("--wait", action="store_true",
                           help="when another run holds this build folder, wait for it instead of exiting 2")
    p = sub.add_parser("verify", help="check a build's files against its manifest.json: checksums, schema, metadata")
    p.add_argument("directory", help="a build folder (build/<name>) or its artifacts folder")
    p.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=verbose)
    return parser


def verify(directory: str) -> int:
    """0: every file matches the manifest; 1: a file does not (named); 2: no readable manifest."""
    from pipeline import manifest

    try:
        result = manifest.verify(directory)
    except manifest.ManifestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for line in result.checked:
        print(f"ok    {line}")
    for line in result.warned:
        print(f"warned {line}")
    for line in result.notes:
        print(f"note  {line}")
    for line in result.problems:
        print(f"FAIL  {line}")
    if result.problems:
        print(f"verify failed: {len(result.problems)} problem(s) in {directory}; re-export (make export) to rebuild "
              "the files, or restore them from the build that wrote the manifest.", file=sys.stderr)
        return 1
    warned = f", {len(result.warned)} of them published over budget (warned)" if result.warned else ""
    print(f"verify passed: {len(result.checked) + len(result.warned)} files match the manifest{warned}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    console.setup(args.verbose)  # before TensorFlow is imported: its start-up lines go through the filter
    if args.command == "verify":
        return verify(args.directory)
    try:
        from pipeline.config import check_paths, load_config

        cfg = load_config(args.config, args.overrides)
        if args.command == "path":
            print(cfg.build_root)
            return 0
        if args.command == "status":
            from pipeline import runner

            lines = {stage: "up to date" if reason is None else "stale: " + reason
                     for stage, reason in runner.status(cfg)}
            lines.update((stage, "not needed: " + reason) for stage, reason in runner.not_needed(cfg))
            for stage, _ in runner.all_stages():  # in the order data flows through them
                if stage.name in lines:
                    print(f"{stage.name:<10} {lines[stage.name]}")
            return 0
        from pipeline import distribution

        task = distribution.task_from_env() if distribution.wants_multi_worker(cfg.train) else None
        chief = task is None or task.is_chief
        # Before the runner is imported (it imports TensorFlow): a bad path is one line, at once.
        check_paths(cfg, args.config, chief=chief)
        if chief:  # what the console leaves out goes to the build folder, once it is certain to be made
            console.attach_log(cfg.build_root)
        from pipeline import runner
        from pipeline.lock import hold

        # One run per build folder; the other workers of a multi-worker run write nothing there.
        command = " ".join([_prog(), *(argv if argv is not None else sys.argv[1:])])[:300]
        with terminate_raises(), (hold(cfg.build_root, command, args.wait) if chief else contextlib.nullcontext()):
            ran = runner.run(cfg, args.config, force=tuple(args.force), through=args.through)
        if not chief:
            print(f"{task.task_type} {task.index}: trained with the chief in {', '.join(ran) if ran else 'no stage'}; "
                  f"the chief writes {cfg.build_root}")
            return 0
        print(f"{cfg.build_root}: ran {', '.join(ran) if ran else 'no stage (everything up to date)'}")
        return 0
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Interrupted as exc:  # SIGTERM anywhere, or either signal during fine-tuning
        print(f"interrupted: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"interrupted: {RUN_AGAIN}", file=sys.stderr)
        return 130
    except Exception as exc:
        if not disk_full(exc):
            raise  # our bug: its traceback
        print(f"error: {full_disk(exc)}", file=sys.stderr)
        return 1


def full_disk(exc: BaseException) -> str:
    """One sentence for a write that failed on a full disk, naming the file where the error does."""
    chain = list(causes(exc))
    full = next((e for e in chain if isinstance(e, OSError) and disk_full(e) and e.errno), None) or next(
        (e for e in chain if disk_full(e)), exc)
    where = full.filename if isinstance(full, OSError) and full.filename else None
    reason = full.strerror if isinstance(full, OSError) and full.strerror else one_line(full, 160)
    return (f"the disk is full: no space left to write {show(str(where)) if where else 'a file'} "
            f"({reason}); free space on that disk (or set build_dir to a larger one) and run again: "
            "stages that finished are kept, and artifacts/ still holds the previous bundle if there was one.")



def entry() -> None:
    """The ``mobile-export`` console script (pyproject.toml [project.scripts])."""
    sys.exit(main())


if __name__ == "__main__":
    entry()
