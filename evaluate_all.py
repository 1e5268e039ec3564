"""Evaluate every submission, one Ray actor per submission on a dedicated device.

On a cluster: ``ray submit ray_config.yaml evaluate_all.py [args]`` runs this on the head node,
which connects to the running cluster (a head started by ``ray up`` is recognised by its
``~/ray_bootstrap_config.yaml``; a GPU run waits for the GPUs that file declares). Locally:
``python evaluate_all.py`` starts its own private Ray instance (never one it merely finds on the
machine; ``--address`` or ``RAY_ADDRESS`` join another); with no arguments it evaluates the
shipped submissions on the embedded split on CPU. Mistakes in the command line (unknown id,
timing protocol or rules, rules whose splits the run will not have, a missing data folder,
``--split`` without ``--data``, an unknown ``--device``) end with one ``error:`` line naming the fix
and exit status 2, before Ray starts and before any run folder is created.
Results stream into ``./results/<run_id>/`` of the working folder (Parquet; ``--results`` moves
them); re-running with the same ``--run-id`` resumes. The closing ranking (``--rank``, default
``auto``: the rules that fit the run's splits, :func:`esr_eval.ranking.fitting_rules`) is the
run's own: it writes ``rankings/`` and the report. See README, "Running on a cluster".

The options it shares with ``esr-eval evaluate`` (the submissions, ``--root``, ``--manifests``,
the measurement, ``--baseline``) and their defaults are declared in :mod:`esr_eval.cli`; this
script adds only its own (the device plan, Ray, the actors' clocks, the closing ranking). The
root defaults to the current folder, or ``~/esr-eval`` from the home folder ``ray submit`` runs in
(:func:`esr_eval.cli.default_root`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from esr_eval.cli import (
    UsageError,
    add_baseline_arg,
    add_run_args,
    add_submission_args,
    add_version_arg,
    check_data_options,
    check_rules_fit,
    parse,
    prepare_run,
    print_rankings,
    print_run_summary,
    ranking_protocol,
)

DEVICE_PLANS = ("auto", "cuda", "cpu")


def build_parser() -> argparse.ArgumentParser:
    """The shared options from :mod:`esr_eval.cli`, then this script's own."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_version_arg(parser)
    add_submission_args(parser)
    add_run_args(parser)
    add_baseline_arg(parser)
    parser.add_argument("--device", default="auto",
                        help="auto: a GPU run when the cluster has or declares GPUs (--min-gpus), else CPU; "
                             "cuda: a GPU run (one GPU per actor); cpu: time on CPUs even where GPUs exist")
    parser.add_argument("--address", default=None,
                        help="Ray address to join; default: RAY_ADDRESS, else this cluster if this is a head "
                             "started by `ray up` (what `ray submit` runs on), else a private local instance")
    parser.add_argument("--min-gpus", type=int, default=None,
                        help="GPU runs: GPUs that must be present before anything runs (default: what the "
                             "cluster config declares, else 1); giving it makes an auto run a GPU run")
    parser.add_argument("--wait-for-gpus", type=float, default=600.0,
                        help="GPU runs: seconds to wait for --min-gpus GPUs to join before refusing (default 600)")
    parser.add_argument("--timeout", type=float, default=1800.0,
                        help="seconds a submission may run inside its actor before the actor is killed")
    parser.add_argument("--startup-timeout", type=float, default=900.0,
                        help="seconds an actor may take to start (not counted against the submission)")
    parser.add_argument("--max-attempts", type=int, default=3, help="attempts per submission when its node is lost")
    parser.add_argument("--cpus-per-actor", type=int, default=1, help="CPU-only clusters: CPUs (and threads) per actor")
    parser.add_argument("--num-cpus", type=int, default=None, help="local instance only: CPUs Ray may use")
    parser.add_argument("--allow-mixed-gpus", action="store_true", help="allow different GPU models (recorded)")
    parser.add_argument("--gpu-model", default=None, help="pin a GPU model (Ray accelerator_type, e.g. A100)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--rank", default="auto",
                        help="ranking rules for the closing ranking and report (default auto: demo for the "
                             "embedded split, else the latest challenge rules whose valid and test splits the run "
                             "has, else demo on the run's splits, saying so); 'none' skips them")
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return parse(build_parser(), argv)


def check_usage(args: argparse.Namespace) -> None:
    """Refuse mistakes that need no Ray and no model: each message names the fix."""
    from esr_eval.protocols import load_protocol

    if args.device not in DEVICE_PLANS:
        raise UsageError(f"--device {args.device}: not a device plan of evaluate_all.py. Fix: pass auto, cuda or cpu "
                         "(each actor gets a GPU of its own; `esr-eval evaluate` takes cuda:N)")
    check_data_options(args)
    if args.rank not in ("auto", "none"):
        load_protocol(args.rank)
    for name, value in (("--min-gpus", args.min_gpus), ("--max-attempts", args.max_attempts),
                        ("--cpus-per-actor", args.cpus_per_actor)):
        if value is not None and value < 1:
            raise UsageError(f"{name} {value}: must be at least 1")


def plan_device(args: argparse.Namespace) -> tuple[str, int | None]:
    """(cuda|cpu, GPUs required) of this run; a GPU run waits for its GPUs or is refused."""
    from esr_eval.nodes import alive_nodes, declared_gpus_here, gpu_count, gpu_models, wait_for_gpus

    declared = declared_gpus_here()
    gpu_run = args.device == "cuda" or (
        args.device == "auto" and bool(args.min_gpus or declared or args.gpu_model or gpu_count()))
    if not gpu_run:
        return "cpu", None
    needed = args.min_gpus or declared or 1
    present = gpu_models(alive_nodes())
    if args.gpu_model and present and args.gpu_model not in present and gpu_count() >= needed:
        raise UsageError(f"--gpu-model {args.gpu_model}: the cluster has no such GPU (it has "
                         f"{', '.join(sorted(present))}). Fix: pass one of those names, or drop --gpu-model")
    wait_for_gpus(needed, args.wait_for_gpus, args.gpu_model, report=lambda line: print(line, file=sys.stderr))
    return "cuda", needed


def rank_and_report(run_dir: Path, protocol_name: str, baseline: str | None = None) -> None:
    """Write rankings and the report of the finished run, and print the main ranking."""
    from esr_eval.ranking import rank_run
    from esr_eval.report import write_report

    print()
    protocol = ranking_protocol(run_dir, protocol_name, baseline=baseline)  # auto: prints what could not apply
    print_rankings(rank_run(run_dir, protocol), protocol)
    paths = write_report(run_dir, protocol)
    print(f"\nrankings: {run_dir / 'rankings'}\nreport: {paths.html} (and {paths.markdown.name})")


def measure(args: argparse.Namespace) -> tuple[Path, dict]:
    """Validate, connect, plan the device, then run; returns (run folder, statuses)."""
    import dataclasses

    from esr_eval.data import recheck_splits
    from esr_eval.driver import DriverOptions, run_distributed
    from esr_eval.nodes import apply_ray_env, choose_address, connect
    from esr_eval.protocols import load_protocol
    from esr_eval.provenance import run_metadata
    from esr_eval.run import RunFolder, new_run_id
    from esr_eval.scheduling import expected_seconds

    check_usage(args)
    subs, errors, splits, config = prepare_run(args)
    if args.rank not in ("auto", "none"):
        check_rules_fit(load_protocol(args.rank), [split.name for split in splits], f"--rank {args.rank}",
                        "--rank auto, or --rank none and rank later with `esr-eval rank RUN --rules "
                        f"{args.rank} --valid-split NAME --test-split NAME`")
    folder = RunFolder.open(args.results, args.run_id or new_run_id())
    try:
        apply_ray_env()
        address = choose_address(args.address)
        connect(address, args.num_cpus)
        device, gpus_needed = plan_device(args)
        config = dataclasses.replace(config, device=device)
        options = DriverOptions(timeout_s=args.timeout, startup_timeout_s=args.startup_timeout,
                                max_attempts=args.max_attempts, cpus_per_actor=args.cpus_per_actor,
                                allow_mixed_gpus=args.allow_mixed_gpus, gpu_model=args.gpu_model,
                                progress=not args.no_progress,
                                expected_s=expected_seconds(args.results, exclude_run=folder.run_id))
        meta = run_metadata(folder.run_id, config.protocol, splits, subs, "ray", device,
                            {"ray_address": address.address, "ray_address_source": address.source,
                             "device_requested": args.device, "gpus_required": gpus_needed})
        folder.write_run_json(meta)
        summary = run_distributed(subs, errors, splits, config, folder, options)
        split_check = recheck_splits(splits)  # the split files again, now: did they change mid-run?
        measured_on = sorted(folder.read_table("submissions")["device_kind"].dropna().unique())
        folder.write_run_json({**meta, "device_kinds_measured": measured_on,
                               "scheduling": summary.scheduling, "slots": summary.slots,
                               "gpu_models": list(summary.gpu_models), "allow_mixed_gpus": args.allow_mixed_gpus,
                               "gpu_model_pinned": args.gpu_model, "makespan_s": summary.makespan_s,
                               "skipped_as_complete": list(summary.skipped), "splits_verified_at_end": split_check})
        print("\n".join(folder.closing_lines(split_check)), flush=True)  # the ledger digest: keep it
    except BaseException:
        folder.close(discard_if_empty=True)
        raise
    folder.close()
    return folder.path, summary.statuses


def main(argv: list[str] | None = None) -> int:
    from esr_eval.driver import HomogeneityError
    from esr_eval.manifest import SubmissionError
    from esr_eval.nodes import GpuWaitError, rsync_down_lines
    from esr_eval.run import RunLockedError

    args = parse_args(argv)
    try:
        run_dir, statuses = measure(args)
    except (UsageError, SubmissionError, ValueError, FileNotFoundError, GpuWaitError, HomogeneityError,
            RunLockedError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print_run_summary(run_dir)
    ranked = True
    if args.rank != "none":
        try:
            rank_and_report(run_dir, args.rank, args.baseline)
        except ValueError as exc:  # the measurements stand; only the closing ranking could not be made
            print(f"error: no ranking written: {exc}\n(the measurements are complete in {run_dir}; "
                  f"rank them with `esr-eval rank {run_dir}` and the fix above)", file=sys.stderr)
            ranked = False
    closing = rsync_down_lines(run_dir)  # on a cluster head: how to copy the run before `ray down`
    if closing:
        print("\n" + "\n".join(closing))
    return 0 if ranked and all(s in ("ok", "skipped") for s in statuses.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
