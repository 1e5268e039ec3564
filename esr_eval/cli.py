"""``esr-eval`` command line: ls, summary, evaluate, rank, report, check, import-ntire.

Each subcommand is a thin layer over one library stage; a submission that fails is reported
as a row with its error, never a crash of the whole command. Exit status is 0 when every
selected submission succeeded, 1 otherwise, 2 for usage errors.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from esr_eval.manifest import Submission, SubmissionError, discover, select


def _add_submission_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ids", nargs="*", help="submission ids, team ids or names (default: all)")
    parser.add_argument("--root", type=Path, default=Path("."),
                        help="submissions root holding models/ and model_zoo/ (default: .)")
    parser.add_argument("--manifests", type=Path, default=None,
                        help="folder searched recursively for manifests (default: <root>/model_zoo)")


def _submissions(args) -> list[Submission]:
    manifests = args.manifests if args.manifests is not None else args.root / "model_zoo"
    return select(discover(manifests, args.root), args.ids)


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"input shape must look like 1x3x256x256, got {text!r}") from exc
    if len(shape) != 4 or min(shape) <= 0:
        raise argparse.ArgumentTypeError(f"input shape must have 4 positive sizes, got {text!r}")
    return shape


def _print_table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))))


def cmd_ls(args) -> int:
    rows = [[s.submission_id, s.team_id, s.name, s.model.class_name, str(s.data_range),
             "none" if s.checkpoint is None else s.checkpoint.path] for s in _submissions(args)]
    _print_table(["submission", "team", "name", "class", "data_range", "checkpoint"], rows)
    return 0


def cmd_summary(args) -> int:
    from esr_eval.complexity import measure_complexity
    from esr_eval.loading import load_submission

    rows, errors = [], []
    for sub in _submissions(args):
        try:
            loaded = load_submission(sub, args.device)
            c = measure_complexity(loaded.model, args.input, sub.data_range, args.device)
        except SubmissionError as exc:
            errors.append(str(exc))
            rows.append([sub.submission_id, "ERROR"] + [""] * 6)
            continue
        rows.append([
            sub.submission_id,
            f"{c.params:,}" + ("" if c.params == c.params_before_forward else f" (before: {c.params_before_forward:,})"),
            f"{c.flops_fvcore:,}",
            f"{c.flops_hook_2022:,}",
            f"{c.flops_audit:,}" + (" FLAG" if c.audit_flag else ""),
            f"{c.activations:,}",
            str(c.num_conv),
            c.audit_text(),
        ])
    print(f"complexity on input {'x'.join(map(str, args.input))} (FLOPs are MAC counts, as the official tools)")
    _print_table(["submission", "params", "flops_fvcore", "flops_hook_2022", "flops_audit",
                  "activations", "num_conv", "audit"], rows)
    for message in errors:
        print(f"\nerror: {message}", file=sys.stderr)
    return 1 if errors else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="esr-eval", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    ls = commands.add_parser("ls", help="list the discovered submissions")
    _add_submission_args(ls)
    ls.set_defaults(func=cmd_ls)

    summary = commands.add_parser("summary", help="complexity by the official definitions, with the audit")
    _add_submission_args(summary)
    summary.add_argument("--input", type=_parse_shape, default=(1, 3, 256, 256),
                         help="input shape NxCxHxW (default 1x3x256x256)")
    summary.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    summary.set_defaults(func=cmd_summary)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (SubmissionError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
