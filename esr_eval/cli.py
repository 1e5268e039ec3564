"""``esr-eval`` command line: ls, summary, evaluate, rank, report, check, import-ntire.

Each subcommand is a thin layer over one library stage; a submission that fails is reported
as a row with its error, never a crash of the whole command. Exit status is 0 when every
selected submission succeeded, 1 otherwise, 2 for usage errors: one ``error:`` line naming the
fix (:class:`UsageError`, and the errors of the stages that read the inputs), printed before any
run folder exists (:func:`check_options`: ``--device``, ``--data``/``--split``; then the ids, the
splits and the timing protocol, all read before ``evaluate`` opens its run folder).

Option names: ``--timing`` is the timing protocol (evaluate, evaluate_all.py), ``--rules`` the
ranking rules (rank, report; ``--rank`` in evaluate_all.py); ``--protocol``, which meant either,
is kept for one release as an alias that warns on one line. ``--version`` prints esr-eval's version
from the package metadata. ``--rules auto`` picks the rules that fit the run's splits
(:func:`esr_eval.ranking.fitting_rules`, its note printed); named rules that read a split the run
lacks are refused. ``rank`` never replaces a ``rankings/`` made under other rules unless
``--replace``: another rules' view of a run is its report (written beside the run's own).

The options that ``evaluate_all.py`` (the Ray entry point) shares with these commands are
declared here once, each with one default: the submission selection and its folders
(:func:`add_submission_args`), the measurement (:func:`add_run_args`) and the ranking's
baseline (:func:`add_baseline_arg`); :func:`parse` fills in the defaults that depend on
``--root`` (:func:`default_root`), for every command and for ``evaluate_all.py`` alike. Results
go to ``./results`` of the working folder unless ``--results`` says otherwise.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from importlib import metadata
from pathlib import Path

from esr_eval.manifest import Submission, SubmissionError, discover_all, printable, select
from esr_eval.settings import DEFAULT_MEMORY_LIMIT_MB

LS_MAX_CELL = 60      # `esr-eval ls`: characters per table cell (longer ones end in '…')
LS_MAX_ERROR = 1000   # `esr-eval ls`: characters per error message
ROOT_ENV = "ESR_EVAL_ROOT"  # a default submissions root (see default_root)
RESULTS_DEFAULT = Path("results")  # the results root when --results is not given: ./results of the working folder
DEVICES = "cpu, cuda or cuda:N (N: a GPU index, e.g. cuda:0)"


class UsageError(ValueError):
    """A mistake in the command line, found before anything is measured or written; its message names the fix."""


class DeprecatedAlias(argparse.Action):
    """An old option spelling kept for one release: stores into the new option's ``dest`` and warns on one line."""

    def __init__(self, option_strings, dest, new_option: str, **kwargs):
        self.new_option = new_option
        super().__init__(option_strings, dest, default=argparse.SUPPRESS,
                         help=f"deprecated spelling of {new_option} (removed in the next release)", **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"warning: {option_string} is deprecated and will be removed in the next release; "
              f"write {self.new_option} {values}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def esr_eval_version() -> str:
    """esr-eval's version, from the installed package's metadata."""
    try:
        return metadata.version("esr-eval")
    except metadata.PackageNotFoundError:
        return "unknown (not installed as a package; pip install -e . records it)"


def add_version_arg(parser: argparse.ArgumentParser) -> None:
    """``--version``: esr-eval's version (`esr-eval`, evaluate_all.py)."""
    parser.add_argument("--version", action="version", version=f"esr-eval {esr_eval_version()}")


def check_device(device: str) -> None:
    """Refuse a device esr-eval does not run on, and a CUDA device torch cannot see, naming the fix."""
    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise UsageError(f"--device {device}: not a device esr-eval runs on. Fix: pass {DEVICES}")
    if device == "cpu":
        return
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(device.partition(":")[2] or 0)
    if not count:
        build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise UsageError(f"--device {device}: torch {torch.__version__} ({build}) sees no CUDA device here. Fix: "
                         "pass --device cpu, or run where a GPU is visible with a CUDA build of torch")
    if index >= count:
        raise UsageError(f"--device {device}: torch sees {count} CUDA device(s) here, cuda:0 to cuda:{count - 1}. "
                         "Fix: pass one of those")


def check_data_options(args: argparse.Namespace) -> None:
    """``--split`` needs ``--data``, and ``--data`` must be a folder (`esr-eval evaluate`, evaluate_all.py)."""
    if args.split and args.data is None:
        raise UsageError(f"--split {args.split[0]} needs --data DIR (the folder holding {args.split[0]}_HR/ and "
                         f"{args.split[0]}_LR/). Fix: add --data DIR, or drop --split to run the embedded split")
    if args.data is not None and not args.data.is_dir():
        raise UsageError(f"--data {args.data}: no such folder. Fix: pass the folder that holds <split>_HR/ and "
                         "<split>_LR/ (on a cluster, the path on the nodes, e.g. /home/ubuntu/esr-eval-data)")


def check_options(args: argparse.Namespace) -> None:
    """The mistakes an `esr-eval` command line can hold before any submission is read (module doc)."""
    if "device" in args:
        check_device(args.device)
    if "data" in args:
        check_data_options(args)


def default_root() -> Path:
    """The submissions root when ``--root`` is not given: the current folder; where it holds no
    ``model_zoo/``, ``$ESR_EVAL_ROOT`` or else ``~/esr-eval`` (where the cluster configs put the
    repository, and where ``ray submit`` finds it from the home folder it runs in) if that holds one."""
    fallbacks = [Path(os.environ[ROOT_ENV])] if os.environ.get(ROOT_ENV) else []
    candidates = [Path("."), *fallbacks, Path.home() / "esr-eval"]
    return next((path for path in candidates if (path / "model_zoo").is_dir()), Path("."))


def add_submission_args(parser: argparse.ArgumentParser, *, ids: bool = True) -> None:
    """The submission selection (``ids``, unless the command names one itself), ``--root`` and ``--manifests``."""
    if ids:
        parser.add_argument("ids", nargs="*", help="submission ids, team ids or names (default: all)")
    parser.add_argument("--root", type=Path, default=None,
                        help="submissions root holding models/ and model_zoo/ (default: ., or where it holds no "
                             f"model_zoo/: ${ROOT_ENV}, else ~/esr-eval, when that holds one)")
    parser.add_argument("--manifests", type=Path, default=None,
                        help="folder searched recursively for manifests (default: <root>/model_zoo)")


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv``, then fill in the defaults that depend on the root: ``--root``
    (:func:`default_root`), ``--manifests`` (``<root>/model_zoo``); ``--results`` is ``./results``."""
    args = parser.parse_args(argv)
    if "root" in args:
        args.root = default_root() if args.root is None else args.root
        args.manifests = args.root / "model_zoo" if args.manifests is None else args.manifests
    if "results" in args and args.results is None:
        args.results = RESULTS_DEFAULT
    return args


def selected_submissions(args) -> tuple[list[Submission], list[SubmissionError]]:
    """Selected valid submissions, and the selected manifests that failed validation."""
    subs, errors = discover_all(args.manifests, args.root)
    if args.ids:
        known = {e.submission_id for e in errors}
        wanted = [t for t in args.ids if t not in known]
        errors = [e for e in errors if e.submission_id in args.ids]
        subs = select(subs, wanted) if wanted else []
    return subs, errors


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"input shape must look like 1x3x256x256, got {text!r}") from exc
    if len(shape) != 4 or min(shape) <= 0:
        raise argparse.ArgumentTypeError(f"input shape must have 4 positive sizes, got {text!r}")
    return shape


def _print_table(headers: list[str], rows: list[list[str]], max_cell: int | None = None) -> None:
    """Aligned columns; unprintable characters escaped, cells clipped to ``max_cell`` characters."""
    rows = [[printable(cell, max_cell) for cell in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))))


def cmd_ls(args) -> int:
    subs, errors = selected_submissions(args)
    rows = [[s.submission_id, s.team_id, s.name, s.model.class_name, str(s.data_range),
             "none" if s.checkpoint is None else s.checkpoint.path] for s in subs]
    rows += [[e.submission_id, "", "", "INVALID", "", ""] for e in errors]
    _print_table(["submission", "team", "name", "class", "data_range", "checkpoint"], rows, max_cell=LS_MAX_CELL)
    _print_errors(errors)
    return 1 if errors else 0


def _print_errors(errors) -> None:
    for error in errors:
        print(f"\nerror: {printable(str(error), LS_MAX_ERROR)}", file=sys.stderr)


def cmd_summary(args) -> int:
    from esr_eval.summary import check_summary_args, summarize, write_summary

    check_summary_args(args.format, args.out, args.jobs, args.timeout)
    subs, manifest_errors = selected_submissions(args)
    rows = summarize(subs, manifest_errors, input_shape=args.input, device=args.device, jobs=args.jobs,
                     timeout_s=args.timeout)
    return write_summary(rows, args.format, args.out, show_output=args.show_output, input_shape=args.input)


def add_run_args(parser: argparse.ArgumentParser) -> None:
    """The measurement's options (data, timing, sandbox, output), shared by `esr-eval evaluate` and evaluate_all.py."""
    parser.add_argument("--data", type=Path, default=None,
                        help="folder with official-layout splits <split>_HR/ and <split>_LR/ "
                             "(default: the embedded split)")
    parser.add_argument("--split", action="append", default=None,
                        help="split name under --data, e.g. DIV2K_LSDIR_valid (repeatable; default: all found)")
    parser.add_argument("--pair", nargs=3, action="append", metavar=("NAME", "HR_DIR", "LR_DIR"),
                        help="a plain HR/LR folder pair as a split (repeatable): files pair by the stem their names "
                             "share without the usual markers (_HR/_LR, x4, _SRF_4, LRBI_x4, _bicubic), e.g. "
                             "img_001_SRF_4_HR.png with img_001_SRF_4_LR.png, baby.png with babyx4.png; "
                             "the scale is read from the image sizes")
    parser.add_argument("--hr-glob", default=None, metavar="PATTERN",
                        help="--pair: the HR files are those whose names match PATTERN, and its one * is the stem "
                             "they share with their LR file, e.g. '*_HR.png' (default: the markers above)")
    parser.add_argument("--lr-glob", default=None, metavar="PATTERN",
                        help="--pair: the LR files are those whose names match PATTERN, and its one * is the stem "
                             "they share with their HR file, e.g. '*_LR.png' (default: the markers above)")
    parser.add_argument("--timing", default="esr-default",
                        help="timing protocol: esr-default (default) or official (see README, Timing protocols)")
    parser.add_argument("--protocol", dest="timing", action=DeprecatedAlias, new_option="--timing")
    parser.add_argument("--repeats", type=int, default=None, help="override the timing protocol's timed repeats")
    parser.add_argument("--warmup", type=int, default=None, help="override the timing protocol's warm-up passes")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (fixed and recorded)")
    parser.add_argument("--no-hygiene", action="store_true", help="skip the hygiene checks")
    parser.add_argument("--memory-limit-mb", type=int, default=DEFAULT_MEMORY_LIMIT_MB,
                        help=f"host memory one submission may use (RLIMIT_DATA, default {DEFAULT_MEMORY_LIMIT_MB}); "
                             "0: no limit")
    parser.add_argument("--no-landlock", action="store_true",
                        help="do not restrict the sandbox with Landlock (only where it gets in the way, e.g. a GPU "
                             "driver that needs other files; recorded in every row's `sandbox` column)")
    parser.add_argument("--ssim", action="store_true",
                        help="also compute SSIM and SSIM-Y (off by default, as in the official script)")
    parser.add_argument("--results", type=Path, default=None,
                        help="results root, one folder per run (default: ./results of the working folder)")
    parser.add_argument("--run-id", default=None, help="run id; an existing one is resumed")


def print_run_summary(run_dir: Path) -> None:
    from esr_eval.run import summary_frame

    frame = summary_frame(run_dir)
    with __import__("pandas").option_context("display.width", 200, "display.max_columns", 20):
        print(frame.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"\nresults: {run_dir}  (pd.read_parquet('{run_dir}/submissions'), …/splits, …/samples)")


def prepare_run(args):
    """(submissions, manifest errors, splits, evaluation config) of a run, all validated before any model runs."""
    from esr_eval.data import resolve_splits, scale_gap
    from esr_eval.evaluate import EvaluationConfig
    from esr_eval.timing import get_protocol

    subs, manifest_errors = selected_submissions(args)
    splits = resolve_splits(args.data, args.split, args.pair, {sub.scale for sub in subs}, args.hr_glob, args.lr_glob)
    gaps = {sub.submission_id: scale_gap(sub.scale, splits, args.data, args.pair) for sub in subs}
    manifest_errors = manifest_errors + [SubmissionError(sub.submission_id, f"scale {sub.scale}", *gaps[sub.submission_id])
                                         for sub in subs if gaps[sub.submission_id]]
    subs = [sub for sub in subs if not gaps[sub.submission_id]]
    protocol = get_protocol(args.timing, args.repeats, args.warmup)
    config = EvaluationConfig(protocol=protocol, device=args.device, torch_threads=args.threads,
                              hygiene=not args.no_hygiene, ssim=args.ssim,
                              memory_limit_mb=args.memory_limit_mb or None, landlock=not args.no_landlock)
    return subs, manifest_errors, splits, config


def cmd_evaluate(args) -> int:
    from esr_eval.data import recheck_splits
    from esr_eval.environments import lacking
    from esr_eval.evaluate import evaluate_submission, manifest_failure, requirements_failure
    from esr_eval.provenance import run_metadata
    from esr_eval.run import RunFolder, fingerprint, new_run_id

    subs, manifest_errors, splits, config = prepare_run(args)
    protocol = config.protocol
    folder = RunFolder.open(args.results, args.run_id or new_run_id())
    failed = len(manifest_errors)
    closing: list[str] = []
    try:
        done = folder.completed(device_kind=args.device.split(":")[0])
        meta = run_metadata(folder.run_id, protocol, splits, subs, "in-process", args.device)
        folder.write_run_json(meta)
        for error in manifest_errors:
            folder.write_result(manifest_failure(error, folder.run_id), fingerprint=None)
            print(f"{error.submission_id}: error — {error}")
        for sub in subs:
            key = fingerprint(sub, protocol.protocol_id, splits)
            if done.get(sub.submission_id) == key:
                print(f"{sub.submission_id}: already complete in this run, skipped")
                continue
            unmet = lacking(sub)
            result = (evaluate_submission(sub, splits, config, folder.run_id) if not unmet
                      else requirements_failure(sub, unmet, folder.run_id))
            folder.write_result(result, key)
            status = result.submission.status
            failed += status not in ("ok", "skipped")
            print(f"{sub.submission_id}: {status}" + (f" — {result.submission.error}" if status != "ok" else ""),
                  flush=True)
        split_check = recheck_splits(splits)  # the split files again, now: did they change mid-run?
        folder.write_run_json({**meta, "splits_verified_at_end": split_check})
        closing = folder.closing_lines(split_check)
        failed += any(line.startswith("WARNING") for line in closing)  # split changed, or folder tampered
    except BaseException:
        folder.close(discard_if_empty=True)  # a run that failed before its first row leaves no folder
        raise
    folder.close()
    print_run_summary(folder.path)
    print("\n" + "\n".join(closing))
    return 1 if failed else 0


def cmd_import_ntire(args) -> int:
    from esr_eval.importer import import_ntire

    report = import_ntire(args.checkout, args.out, checksum=args.checksum, test_demo=args.test_demo)
    print(report.summary_text())
    print(f"\nnext: esr-eval summary --root {args.checkout} --manifests {args.out}")
    return 0 if report.translated else 1


def ranking_protocol(run_dir: Path, name: str = "auto", valid_split: str | None = None,
                     test_split: str | None = None, resamples: int | None = None, *,
                     baseline: str | None = None, accept_baseline_mismatch: bool = False):
    """The ranking rules asked for; ``auto``: the rules that fit the run's splits
    (:func:`esr_eval.ranking.fitting_rules`), printing its note (what could not apply) on one line.

    ``baseline`` names the baseline submission explicitly (else the protocol's identity finds it);
    it is still verified against the published figures unless ``accept_baseline_mismatch``.
    """
    from esr_eval.protocols import load_protocol
    from esr_eval.ranking import fitting_rules
    from esr_eval.records import read_table

    if name == "auto":
        choice = fitting_rules(read_table(run_dir, "splits")["split"], read_table(run_dir, "submissions"))
        if choice.note:
            print(f"rules auto: {choice.note}", flush=True)
        protocol = choice.protocol
    else:
        protocol = load_protocol(name)
    if valid_split or test_split:
        protocol = protocol.with_splits(valid=valid_split, test=test_split)
    if resamples:
        protocol = protocol.with_resamples(resamples)
    if accept_baseline_mismatch and not baseline:
        raise ValueError("--accept-baseline-mismatch applies to a baseline named with --baseline SUBMISSION_ID")
    if baseline:
        protocol = protocol.with_baseline(baseline, accept_mismatch=accept_baseline_mismatch)
    return protocol


def check_rules_fit(protocol, split_names, option: str, fix: str) -> None:
    """Refuse rules that read a split the run does not have: they would rank nobody. A run with no
    split rows (nothing measured) passes: its rows are ranked as what they are, failures."""
    present = [str(name) for name in dict.fromkeys(split_names)]
    absent = [f"{split} ({role})" for role, split in protocol.splits if split not in present]
    if present and absent:
        raise UsageError(f"{option} ranks splits {', '.join(absent)}, which this run does not have (it has "
                         f"{', '.join(present)}), so nobody would be ranked. Fix: {fix}")


def _ranking_protocol(args):
    from esr_eval.records import read_table

    protocol = ranking_protocol(args.run, args.rules, args.valid_split, args.test_split, args.resamples,
                                baseline=args.baseline, accept_baseline_mismatch=args.accept_baseline_mismatch)
    if args.rules != "auto":
        check_rules_fit(protocol, read_table(args.run, "splits")["split"], f"--rules {args.rules}",
                        "name the run's splits that stand for them with --valid-split NAME --test-split NAME, "
                        "or use --rules auto")
    return protocol


def _check_rankings_kept(run: Path, protocol, rules: str) -> None:
    """Refuse to replace a ``rankings/`` made under other rules (``rank --replace`` does)."""
    from esr_eval.records import read_rankings

    stored = read_rankings(run)
    if stored is None:
        return
    held = stored.metadata.get("esr_eval.protocol") or (str(stored.table["protocol"].iloc[0]) if len(stored.table)
                                                        else None)
    if held is not None and held != protocol.name:
        raise UsageError(f"{run / 'rankings'} holds this run's {held} ranking; ranking under {protocol.name} would "
                         f"replace it. Fix: `esr-eval report {run} --rules {rules}` writes a report under "
                         f"{protocol.name} beside the run's own and leaves rankings/ as it is; or add --replace to "
                         f"make {protocol.name} the run's ranking")


def print_rankings(rankings, protocol) -> None:
    main = protocol.main_track
    columns = [c for c in ["submission_id", "role", "gate_pass", f"score_{main}", f"rank_{main}",
                           f"rank_{main}_ci_low", f"rank_{main}_ci_high", f"tied_with_{main}", "excluded_reason"]
               if c in rankings.columns]
    print(f"protocol {protocol.name}: {protocol.description}")
    with __import__("pandas").option_context("display.width", 220, "display.max_colwidth", 70):
        print(rankings[columns].to_string(index=False, float_format=lambda v: f"{v:.4f}"))


def cmd_rank(args) -> int:
    from esr_eval.ranking import baseline_summary, rank_run
    from esr_eval.records import verify_run

    integrity = verify_run(args.run)  # warn first: a ranking that then fails still gets the warning
    if integrity.banner():
        print(f"WARNING: {integrity.banner()}", file=sys.stderr)
    protocol = _ranking_protocol(args)
    if not args.replace:
        _check_rankings_kept(args.run, protocol, args.rules)
    rankings = rank_run(args.run, protocol)
    print_rankings(rankings, protocol)
    print(f"\nbaseline: {baseline_summary(rankings)}")
    integrity_column = rankings["run_integrity"].iloc[0] if len(rankings) else "?"
    print(f"written: {args.run / 'rankings'} (run_integrity {integrity_column})")
    print("\n".join(integrity.lines()))
    return 1 if integrity.tampered or integrity.split_changed else 0


def cmd_report(args) -> int:
    from esr_eval.records import verify_run
    from esr_eval.report import write_report

    integrity = verify_run(args.run)
    if integrity.banner():
        print(f"WARNING: {integrity.banner()}", file=sys.stderr)
    paths = write_report(args.run, _ranking_protocol(args), args.out)
    print(f"report: {paths.html}\nmarkdown: {paths.markdown}")
    print("\n".join(integrity.lines()))
    return 1 if integrity.tampered or integrity.split_changed else 0


def add_baseline_arg(parser: argparse.ArgumentParser) -> None:
    """``--baseline``: the ranking's baseline named explicitly (`esr-eval rank/report`, evaluate_all.py)."""
    parser.add_argument("--baseline", default=None, metavar="SUBMISSION_ID",
                        help="the ranking's baseline submission, named explicitly (default: found by the rules' "
                             "baseline identity); still verified against the published complexity")


def _add_device_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help=f"{DEVICES} (default cpu)")


def _add_ranking_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", type=Path, help="run folder, e.g. results/<run_id>")
    parser.add_argument("--rules", default="auto",
                        help="ranking rules: ntire2022|ntire2024|ntire2025|ntire2026|demo or a YAML path (default "
                             "auto: demo for the embedded split, else the latest challenge rules whose valid and "
                             "test splits the run has, else demo on the run's splits, saying so)")
    parser.add_argument("--protocol", dest="rules", action=DeprecatedAlias, new_option="--rules")
    parser.add_argument("--valid-split", default=None, help="run split that stands for 'valid'")
    parser.add_argument("--test-split", default=None, help="run split that stands for 'test'")
    parser.add_argument("--resamples", type=int, default=None, help="bootstrap resamples for the intervals")
    add_baseline_arg(parser)
    parser.add_argument("--accept-baseline-mismatch", action="store_true",
                        help="take the --baseline submission even when its complexity is not the published "
                             "baseline's (recorded in the rankings)")


def cmd_check(args) -> int:
    from esr_eval.check import check_submission, find_manifest

    limits = {} if args.timeout is None else {"timeout_s": args.timeout}
    report = check_submission(find_manifest(args.submission, args.manifests), args.root, device=args.device, **limits)
    print(report.render())
    return 0 if report.ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="esr-eval", description=__doc__.splitlines()[0])
    add_version_arg(parser)
    commands = parser.add_subparsers(dest="command", required=True)

    ls = commands.add_parser("ls", help="list the discovered submissions")
    add_submission_args(ls)
    ls.set_defaults(func=cmd_ls)

    summary = commands.add_parser("summary", help="complexity by the official definitions, with the audit")
    add_submission_args(summary)
    summary.add_argument("--input", type=_parse_shape, default=(1, 3, 256, 256),
                         help="input shape NxCxHxW (default 1x3x256x256)")
    _add_device_arg(summary)
    summary.add_argument("--jobs", type=int, default=None,
                         help="submissions measured at once, each in its own sandbox process (default: one per CPU)")
    summary.add_argument("--format", default="table", choices=["table", "csv", "json", "parquet"],
                         help="table (default), csv, json (to stdout, or --out) or parquet (needs --out)")
    summary.add_argument("--out", type=Path, default=None, help="write the summary to this file (default: stdout)")
    summary.add_argument("--show-output", action="store_true",
                         help="print what each submission's code wrote (print, warnings, C-level output) under "
                              "the table; it is always kept in the csv/json/parquet `output` column")
    summary.add_argument("--timeout", type=float, default=None,
                         help="seconds a submission's process may take to answer one request (its load, its counts; "
                              "default: esr_eval.summary.DEFAULT_TIMEOUT_S); past it the submission is an error row")
    summary.set_defaults(func=cmd_summary)

    evaluate = commands.add_parser("evaluate", help="evaluate submissions in this process on one device")
    add_submission_args(evaluate)
    add_run_args(evaluate)
    _add_device_arg(evaluate)
    evaluate.set_defaults(func=cmd_evaluate)

    check = commands.add_parser("check", help="pre-flight one submission: manifest, import, load, forward, "
                                               "complexity, hygiene, PSNR vs bicubic (exit 1 on a failure)")
    check.add_argument("submission", help="a manifest path, or a submission id looked up under --manifests")
    add_submission_args(check, ids=False)
    _add_device_arg(check)
    check.add_argument("--timeout", type=float, default=None,
                       help="seconds the submission's process may take to answer any one request "
                            "(a call, the load, the counts; default: esr_eval.check.DEFAULT_TIMEOUT_S)")
    check.set_defaults(func=cmd_check)

    importer = commands.add_parser("import-ntire",
                                   help="write manifests from an NTIRE-style test_demo.py (parsed, never run)")
    importer.add_argument("checkout", type=Path,
                          help="the NTIRE-style repository (holds test_demo.py, models/, model_zoo/)")
    importer.add_argument("--out", type=Path, required=True, help="folder for the generated manifests")
    importer.add_argument("--test-demo", default="test_demo.py",
                          help="file holding select_model (default test_demo.py)")
    importer.add_argument("--checksum", action="store_true", help="record each checkpoint's sha256 in its manifest")
    importer.set_defaults(func=cmd_import_ntire)

    rank = commands.add_parser("rank", help="rank a run under a challenge's rules (writes <run>/rankings)")
    _add_ranking_args(rank)
    rank.add_argument("--replace", action="store_true",
                      help="replace <run>/rankings even when it holds a ranking under other rules (refused "
                           "without it; `esr-eval report --rules` shows other rules beside the run's own)")
    rank.set_defaults(func=cmd_rank)

    report = commands.add_parser("report", help="HTML + Markdown report of a run")
    _add_ranking_args(report)
    report.add_argument("--out", type=Path, default=None,
                        help="output folder (default <run>/report; <run>/report-<rules> when <run>/rankings "
                             "holds other rules)")
    report.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parse(build_parser(), argv)
    try:
        check_options(args)
        return args.func(args)
    except (SubmissionError, FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
