"""Evaluate every submission, one Ray actor per submission on a dedicated device.

On a cluster: ``ray submit ray_config.yaml evaluate_all.py [args]`` runs this on the head node,
which connects to the running cluster. Locally: ``python evaluate_all.py`` starts a local Ray
instance; with no arguments it evaluates the shipped submissions on the embedded split on CPU.
Results stream into ``<root>/results/<run_id>/`` (Parquet); re-running with the same
``--run-id`` resumes. See README, "Running on a cluster".
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from esr_eval.cli import add_run_args, prepare_run, print_rankings, print_run_summary, ranking_protocol

HERE = Path(__file__).resolve().parent


def default_root() -> Path:
    """The repo this script sits in; on a cluster head (`ray submit` copies the script) ~/esr-eval."""
    if (HERE / "model_zoo").is_dir():
        return HERE
    return Path(os.environ.get("ESR_EVAL_ROOT", Path.home() / "esr-eval"))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ids", nargs="*", help="submission ids, team ids or names (default: all)")
    parser.add_argument("--root", type=Path, default=None, help="submissions root (default: this repo, or ~/esr-eval)")
    parser.add_argument("--manifests", type=Path, default=None, help="manifest folder (default: <root>/model_zoo)")
    add_run_args(parser)
    parser.add_argument("--device", default="auto", help="auto (cuda where the actor sees one), cuda or cpu")
    parser.add_argument("--address", default=None,
                        help="Ray address; default: the running cluster if there is one, else a local instance")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per submission before its actor is killed")
    parser.add_argument("--max-attempts", type=int, default=3, help="attempts per submission when its node is lost")
    parser.add_argument("--cpus-per-actor", type=int, default=1, help="CPU-only clusters: CPUs (and threads) per actor")
    parser.add_argument("--num-cpus", type=int, default=None, help="local instance only: CPUs Ray may use")
    parser.add_argument("--allow-mixed-gpus", action="store_true", help="allow different GPU models (recorded)")
    parser.add_argument("--gpu-model", default=None, help="pin a GPU model (Ray accelerator_type, e.g. A100)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--rank", default="auto",
                        help="ranking protocol for the closing ranking and report (default auto: demo for the "
                             "embedded split, else ntire2026); 'none' skips them")
    args = parser.parse_args(argv)
    args.root = args.root or default_root()
    if args.results == Path("results"):
        args.results = args.root / "results"
    return args


def connect(address: str | None, num_cpus: int | None) -> str:
    """Join the running cluster, or start a local instance; returns which."""
    import ray

    if address:
        ray.init(address=address)
        return address
    try:
        ray.init(address="auto")
        return "auto"
    except ConnectionError:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False)
        return "local"


def rank_and_report(run_dir: Path, protocol_name: str) -> None:
    """Write rankings and the report of the finished run, and print the main ranking."""
    from esr_eval.ranking import rank_run
    from esr_eval.report import write_report

    protocol = ranking_protocol(run_dir, protocol_name)
    print()
    print_rankings(rank_run(run_dir, protocol), protocol)
    paths = write_report(run_dir, protocol)
    print(f"\nrankings: {run_dir / 'rankings'}\nreport: {paths.html} (and {paths.markdown.name})")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from esr_eval.driver import DriverOptions, apply_ray_env, run_distributed
    from esr_eval.run import RunFolder, new_run_id, run_metadata
    from esr_eval.scheduling import expected_seconds

    apply_ray_env()
    subs, errors, splits, config = prepare_run(args)
    protocol = config.protocol
    folder = RunFolder.create(args.results, args.run_id or new_run_id())
    folder.lock()
    try:
        mode = connect(args.address, args.num_cpus)
        options = DriverOptions(timeout_s=args.timeout, max_attempts=args.max_attempts,
                                cpus_per_actor=args.cpus_per_actor, allow_mixed_gpus=args.allow_mixed_gpus,
                                gpu_model=args.gpu_model, progress=not args.no_progress,
                                expected_s=expected_seconds(args.results, exclude_run=folder.run_id))
        meta = run_metadata(folder.run_id, protocol, splits, subs, f"ray ({mode})", args.device)
        folder.write_run_json(meta)
        summary = run_distributed(subs, errors, splits, config, folder, options)
        folder.write_run_json({**meta, "scheduling": summary.scheduling, "slots": summary.slots,
                               "gpu_models": list(summary.gpu_models), "allow_mixed_gpus": args.allow_mixed_gpus,
                               "gpu_model_pinned": args.gpu_model, "makespan_s": summary.makespan_s,
                               "skipped_as_complete": list(summary.skipped)})
    finally:
        folder.unlock()
    print_run_summary(folder.path)
    if args.rank != "none":
        rank_and_report(folder.path, args.rank)
    return 0 if all(s == "ok" for s in summary.statuses.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
