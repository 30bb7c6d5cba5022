"""The `genrec` command line (argparse): train, eval and serve. User errors print one line and exit 2."""

from __future__ import annotations

import argparse
import copy
import functools
import json
import math
import sys
import time
from pathlib import Path

from genrec.config import (PRESETS, Config, apply_overrides, config_to_dict, config_to_toml, load_config_file,
                           load_run_config, parse_assignment, preset)
from genrec.data import DATASETS

# The embedded default is a minutes-long CPU demo on synthetic data, not the paper's 101 epochs.
SYNTHETIC_DEFAULT_EPOCHS = 8


def _parser() -> argparse.ArgumentParser:
    from genrec import __version__

    parser = argparse.ArgumentParser(prog="genrec", description="Generative Recommenders (HSTU).")
    parser.add_argument("--version", action="version", version=f"genrec {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    command = functools.partial(commands.add_parser, formatter_class=_DefaultsShown)
    train = command("train", help="train a generative retriever (or ranker) and evaluate it")
    train.add_argument("--task", choices=("retrieval", "ranking"), default=None,
                       help="retrieval: next-item generation; ranking: multi-task action prediction")
    train.add_argument("--dataset", choices=DATASETS, default=None,
                       help="data set reader (default: synthetic, the embedded demo data)")
    train.add_argument("--data-dir", default=None, help="directory or file holding the data set")
    train.add_argument("--user-features", default=None,
                       help="MovieLens users.dat / u.user (or its directory): user-context prefix tokens")
    train.add_argument("--item-features", default=None,
                       help="MovieLens movies.dat / u.item (or its directory), S3-Rec *_item2attributes.json: item "
                            "content added to item tokens (model.item_representation id+content unless set)")
    train.add_argument("--model", choices=sorted(PRESETS), default=None, help="model preset (default: hstu)")
    train.add_argument("--config", type=Path, default=None, help="TOML file overriding the preset")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="assignments",
                       help="override one config field, e.g. --set train.loss.num_negatives=512 (repeatable)")
    train.add_argument("--out", type=Path, default=None,
                       help="run directory (default: runs/<dataset>-<model>-<date>-<time>)")
    train.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    train.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                       help="where to train (default: auto, a GPU when there is one)")
    train.add_argument("--epochs", type=int, default=None,
                       help=f"passes over the data (default: the preset's 101; {SYNTHETIC_DEFAULT_EPOCHS} on synthetic)")
    train.add_argument("--mode", choices=("paper", "validated", "stream"), default=None,
                       help="paper: test after the last epoch; validated: select the epoch on a held-out event; "
                            "stream: one pass in time order, each day evaluated and then trained on (default: paper)")
    train.add_argument("--tie-order", choices=("stable", "paper"), default=None,
                       help="order of events with equal timestamps (default: stable, the file's)")
    train.add_argument("--attention-backend", choices=("auto", "torch", "triton"), default=None,
                       help="torch: the reference; triton: the fused kernel (GPU) (default: auto)")
    train.add_argument("--seed", type=int, default=None, help="random seed (default: 42)")
    train.add_argument("--skip-bad-rows", action="store_true", help="skip and count malformed rows")
    train.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    train.add_argument("--no-progress", action="store_true",
                       help="no progress bar: a plain line every 10 s and per epoch")
    evaluate = command("eval", help="evaluate a trained run")
    evaluate.add_argument("--checkpoint", type=Path, required=True,
                          help="run directory of genrec train, or a checkpoint file in it")
    evaluate.add_argument("--split", choices=("valid", "test"), default="test", help="held-out events to rank")
    evaluate.add_argument("--data-dir", default=None, help="where the run's data set lives now, if it moved")
    evaluate.add_argument("--out", type=Path, default=None,
                          help="where metrics-<split>.json goes (default: --checkpoint)")
    serve = command("serve", help="serve a trained run over HTTP (needs genrec[serve])")
    serve.add_argument("--checkpoint", type=Path, required=True,
                       help="run directory of genrec train, or a checkpoint file in it")
    serve.add_argument("--ranker", type=Path, default=None, help="run directory of genrec train --task ranking")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (1-65535)")
    serve.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    serve.add_argument("--max-k", type=int, default=1000, help="largest k a request may ask for")
    serve.add_argument("--max-candidates", type=int, default=4096, help="most candidates one /v1/rank may send")
    serve.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body (larger: 413)")
    serve.add_argument("--index", choices=("exact", "hnsw", "ivf"), default="exact",
                       help="how /v1/retrieve searches the catalogue: exact, or a FAISS index (needs genrec[ann])")
    serve.add_argument("--index-breadth", type=int, default=128,
                       help="the FAISS index's search breadth (HNSW efSearch, IVF nprobe): recall against speed")
    prepare = command("prepare", help="write an on-disk event store of a data set (train it with --dataset store)")
    prepare.add_argument("--dataset", choices=[name for name in DATASETS if name != "store"], default="events",
                         help="events: a CSV/TSV/Parquet log, streamed in chunks (any size); others are read whole")
    prepare.add_argument("--data-dir", required=True, help="the data set's file or directory")
    prepare.add_argument("--out", type=Path, required=True, help="the store's directory (new or empty)")
    prepare.add_argument("--skip-bad-rows", action="store_true", help="skip and count malformed rows")
    prepare.add_argument("--partition-events", type=int, default=1 << 24,
                         help="events sorted in memory at a time (bounds the memory used)")
    prepare.add_argument("--expand", metavar="USERSxITEMS",
                         help="write the data set's fractal expansion instead (genrec.data.fractal): each user "
                              "copied USERS times, each item up to ITEMS times, e.g. 100x3416 (the source is read "
                              "whole)")
    prepare.add_argument("--expand-seed", type=int, default=0, help="the expansion's seed")
    show = command("config", help="print a preset's full config as TOML (a starting point for --config)")
    show.add_argument("--show", action="store_true", help="print it (the only action for now)")
    show.add_argument("--model", choices=sorted(PRESETS), default="hstu", help="model preset")
    return parser


class _DefaultsShown(argparse.HelpFormatter):
    """Help lines end with their default, where there is one worth saying (not None, not a switch's False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default not in (None, False, [], argparse.SUPPRESS) and "default" not in text:
            text += " (default: %(default)s)"
        return text


def _apply_flags(config: Config, args: argparse.Namespace) -> Config:
    """--config, then --set, then the option flags, applied onto `config`."""
    if args.config is not None:
        config = load_config_file(args.config, config)
    for assignment in args.assignments:
        apply_overrides(config, parse_assignment(assignment))
    overrides = {
        ("data", "dataset"): args.dataset, ("data", "path"): args.data_dir, ("data", "mode"): args.mode,
        ("data", "user_features"): args.user_features, ("data", "item_features"): args.item_features,
        ("data", "tie_order"): args.tie_order, ("train", "device"): args.device,
        ("train", "epochs"): args.epochs, ("train", "seed"): args.seed,
        ("model", "attention_backend"): args.attention_backend, ("train", "task"): args.task,
    }
    for (section, key), value in overrides.items():
        if value is not None:
            setattr(getattr(config, section), key, value)
    if args.skip_bad_rows:
        config.data.skip_bad_rows = True
    if args.item_features is not None and config.model.item_representation == "id":
        config.model.item_representation = "id+content"
    return config


def _train_config(args: argparse.Namespace) -> Config:
    config = _apply_flags(preset(args.model or "hstu"), args)
    # stored absolute, so that the run evaluates from any working directory
    for field in ("path", "user_features", "item_features", "user_series"):
        if getattr(config.data, field) not in (None, "followed_topics", "topics"):
            setattr(config.data, field, str(Path(getattr(config.data, field)).resolve()))
    explicit_epochs = args.epochs is not None or args.config is not None or any(
        a.strip().startswith("train.epochs") for a in args.assignments)
    if config.data.dataset.startswith("synthetic") and not explicit_epochs:
        config.train.epochs = SYNTHETIC_DEFAULT_EPOCHS
    return config.validate()


# what a resumed run may change: how long it trains (its random streams are per device, so not where)
RESUME_MAY_CHANGE = ("train.epochs", "stream.max_windows")


def _resume_config(args: argparse.Namespace) -> Config:
    """The stored config of the run in --out, with a new --epochs; any other flag that contradicts the stored
    config is an error listing every difference (a resumed run must continue the same experiment)."""
    stored = load_run_config(args.out)
    requested = copy.deepcopy(stored)
    if args.model is not None:  # the fields the preset sets, as it sets them
        for key, value in _flat(preset(args.model)).items():
            if value != _flat(Config())[key]:
                apply_overrides(requested, parse_assignment(f"{key}={json.dumps(value)}"))
    requested = _apply_flags(requested, args)
    before, after = _flat(stored), _flat(requested)
    conflicts = [f"{key} is {before[key]!r} in the run, {after[key]!r} given" for key in before
                 if before[key] != after[key] and key not in RESUME_MAY_CHANGE]
    if conflicts:
        raise ValueError(f"{args.out}: --resume continues the stored run, and these options contradict it: "
                         + "; ".join(conflicts))
    return requested.validate()


def _flat(config: Config) -> dict:
    """'section.key' (nested with dots) -> value, for every field."""
    def walk(values: dict, prefix: str) -> dict:
        flat = {}
        for key, value in values.items():
            flat.update(walk(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
        return flat
    return walk(config_to_dict(config), "")


def _print_table(title: str, columns: dict[str, dict[str, float]]) -> None:
    """Undefined metrics (an AUC over labels of one class: NaN, null in the JSON) and those a column lacks (the
    popularity baseline has no likelihood) print as n/a."""
    keys = list(next(iter(columns.values())))
    print(f"\n{title}")
    print(f"{'metric':<10}" + "".join(f"{name:>14}" for name in columns))
    for key in keys:
        cells = (values.get(key, math.nan) for values in columns.values())
        print(f"{key:<10}" + "".join(f"{value:>14.4f}" if math.isfinite(value) else f"{'n/a':>14}" for value in cells))


def _run_train(args: argparse.Namespace) -> None:
    from genrec.train.parallel import exit_rank, shutdown
    from genrec.train.trainer import Trainer

    from genrec.train.run_state import check_run_directory

    if args.resume and args.out is None:
        raise ValueError("--resume needs --out: the run directory to continue")
    if args.resume and args.overwrite:
        raise ValueError("--resume continues the run in --out and --overwrite replaces it: choose one")
    config = _resume_config(args) if args.resume else _train_config(args)
    if args.out is None:
        args.out = Path("runs") / f"{config.data.dataset}-{args.model or 'hstu'}-{time.strftime('%Y%m%d-%H%M%S')}"
    check_run_directory(args.out, args.resume, args.overwrite)  # before the data are read
    if config.data.mode == "stream":
        from genrec.train.stream import StreamTrainer
        summary = _fit(StreamTrainer(config, args.out, progress=not args.no_progress), args)
        metrics = {k: v for k, v in summary["overall"].items() if "@" in k or k.endswith("mrr")}
        _print_table(f"prequential metrics ({config.data.dataset}, {summary['windows_done']} of "
                     f"{summary['num_windows']} windows, {summary['overall']['events']} events)",
                     {"model": {k: v for k, v in metrics.items() if not k.startswith("popularity_")},
                      "popularity": {k.removeprefix("popularity_"): v for k, v in metrics.items()
                                     if k.startswith("popularity_")}})
        speed = summary["throughput"]
        print(f"\ntraining steps: {speed['train_tokens']:,} tokens in {speed['step_seconds']:.1f} s, "
              f"{speed['tokens_per_s']:,.0f} tokens/s" + (f", MFU {speed['mfu']:.2%}" if speed["mfu"] else ""))
        print(f"wrote {args.out / 'metrics.json'}")
        return
    if config.train.task == "ranking":
        from genrec.train.ranking import RankingTrainer
        trainer = RankingTrainer(config, args.out, progress=not args.no_progress)
        summary = _fit(trainer, args)
        shutdown(trainer.ranks)
        if trainer.ranks.is_main:
            _print_table(f"test metrics (ranking, {config.data.dataset}, {len(summary['epochs'])} epochs, "
                         f"{summary['train_seconds']:.0f} s)", {"hstu": summary["metrics"], "din": summary["din"]})
            print(f"\nwrote {args.out / 'metrics.json'}")
        exit_rank(trainer.ranks)
        return
    trainer = Trainer(config, args.out, progress=not args.no_progress)
    summary = _fit(trainer, args)
    shutdown(trainer.ranks)
    if trainer.ranks.is_main:
        _print_table(f"test metrics ({config.model.architecture}, {config.data.dataset}, "
                     f"{summary['epoch']} epochs, {summary['train_seconds']:.0f} s)",
                     {"model": summary["metrics"], "popularity": summary["popularity"]})
        print(f"\nwrote {args.out / 'metrics.json'}")
    exit_rank(trainer.ranks)


class Interrupted(Exception):
    """Ctrl-C during training, with where it stopped."""


def _fit(trainer, args: argparse.Namespace) -> dict:
    try:
        return trainer.fit(resume=args.resume, overwrite=args.overwrite)
    except KeyboardInterrupt:
        done = trainer.state["epoch"]
        raise Interrupted(f"interrupted in epoch {done + 1} at step {trainer.state.get('step', 0)}; the last "
                          f"checkpoint holds epoch {done}: continue with genrec train --resume --out {args.out}"
                          ) from None


def _run_eval(args: argparse.Namespace) -> None:
    from genrec.checkpoint import atomic_write_json

    from genrec.checkpoint import locate_checkpoint

    run_dir, _ = locate_checkpoint(args.checkpoint)
    if load_run_config(run_dir).train.task == "ranking":
        from genrec.train.ranking import evaluate_ranking_run
        result = evaluate_ranking_run(args.checkpoint, args.split, data_dir=args.data_dir)
        _print_table(f"{args.split} metrics (ranking)", {"hstu": result["metrics"], "din": result["din"]})
    else:
        from genrec.train.trainer import evaluate_checkpoint
        result = evaluate_checkpoint(args.checkpoint, args.split, data_dir=args.data_dir)
        _print_table(f"{args.split} metrics", {"model": result["metrics"], "popularity": result["popularity"]})
    # named by split, never metrics.json: that file is the training run's own test result
    path = (args.out or run_dir) / f"metrics-{args.split}.json"
    if path.parent.exists() and not path.parent.is_dir():
        raise ValueError(f"{path.parent}: --out must be a directory, and this is a file")
    atomic_write_json(path, {"split": args.split, "checkpoint": result["checkpoint"], "metrics": result["metrics"]})
    print(f"\nwrote {path}")


def _run_serve(args: argparse.Namespace) -> None:
    try:
        import uvicorn

        from genrec.serve.http import Limits, create_app
    except ImportError as error:
        raise ValueError(f"genrec serve needs FastAPI and uvicorn: pip install 'genrec[serve]' ({error})") from error
    if not 1 <= args.port <= 65535:
        raise ValueError(f"--port must be in 1..65535, got {args.port}")
    if min(args.max_k, args.max_candidates, args.max_body_bytes) < 1:
        raise ValueError("--max-k, --max-candidates and --max-body-bytes must be positive")
    from genrec.devices import resolve_device
    resolve_device(args.device)
    limits = Limits(max_k=args.max_k, max_candidates=args.max_candidates, max_body_bytes=args.max_body_bytes)
    uvicorn.run(create_app(args.checkpoint, args.device, limits, args.ranker, args.index, args.index_breadth),
                host=args.host, port=args.port)


def _run_prepare(args: argparse.Namespace) -> None:
    from genrec.data import load_events
    from genrec.data.event_store import prepare, prepare_store
    from genrec.data.fractal import FractalSpec, expansion_chunks
    from genrec.train.run_log import print_line

    if args.partition_events < 1:
        raise ValueError(f"--partition-events must be positive, got {args.partition_events}")
    def read_events():
        return load_events(args.dataset, args.data_dir, args.skip_bad_rows)

    if args.expand:
        spec = FractalSpec.parse(args.expand, args.expand_seed)
        events = read_events()
        manifest = prepare_store(expansion_chunks(events, spec), args.out,
                                 f"{events.source} expanded {spec.user_copies}x{spec.item_copies} seed {spec.seed}",
                                 args.partition_events, lambda: events.skipped_rows, print_line)
    else:
        manifest = prepare(args.dataset, Path(args.data_dir), args.out, args.skip_bad_rows,
                           partition_events=args.partition_events, read_events=read_events, log=print_line)
    print(f"wrote {args.out}: {manifest['events']:,} events, {manifest['users']:,} users, {manifest['items']:,} items"
          f" ({manifest['skipped_rows']} rows skipped); checksum {manifest['checksum'][:16]}")


def _run_config(args: argparse.Namespace) -> None:
    print(f"# genrec preset {args.model!r}: genrec train --config FILE reads this back", end="\n")
    print(config_to_toml(preset(args.model)), end="")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        {"train": _run_train, "eval": _run_eval, "serve": _run_serve, "prepare": _run_prepare,
         "config": _run_config}[args.command](args)
    except ValueError as error:
        print(f"genrec: error: {error}", file=sys.stderr)
        return 2
    except Interrupted as interrupted:
        print(f"genrec: {interrupted}", file=sys.stderr)
        return 130  # the shell's code for Ctrl-C
    except KeyboardInterrupt:  # before training started (reading data) or while evaluating or serving
        print("genrec: interrupted", file=sys.stderr)
        return 130
    return 0
