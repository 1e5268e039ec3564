"""What an import produced: translated branches, branches left out, and the written files.

Contract
--------
``TranslatedBranch`` holds the validated :class:`esr_eval.manifest.ManifestDocument` of one
``model_id`` (its fields are also readable on the branch) plus the notes a reviewer should read;
``UntranslatedBranch`` holds the line of the ``if``/``elif``, the reason it was left out and the
manifest lines to write by hand instead; ``ImportReport.summary_text`` lists both for the command
line, those lines indented under their branch. ``NtireImportError`` is raised
when the file cannot be read as an NTIRE-style ``select_model`` chain at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from esr_eval.manifest import CheckpointSpec, ManifestDocument


class NtireImportError(ValueError):
    """The file cannot be read as an NTIRE-style ``select_model`` chain at all."""


@dataclass(frozen=True)
class TranslatedBranch:
    """One ``model_id`` branch folded into a submission manifest."""

    model_id: int
    line: int
    submission_id: str
    document: ManifestDocument
    notes: tuple[str, ...]

    @property
    def team_id(self) -> str:
        return self.document.team_id

    @property
    def name(self) -> str:
        return self.document.name

    @property
    def model_file(self) -> str:
        return self.document.model.file

    @property
    def class_name(self) -> str:
        return self.document.model.class_name

    @property
    def args(self) -> tuple[Any, ...]:
        return self.document.model.args

    @property
    def kwargs(self) -> Mapping[str, Any]:
        return self.document.model.kwargs

    @property
    def checkpoint(self) -> CheckpointSpec | None:
        return self.document.checkpoint

    @property
    def data_range(self) -> float:
        return self.document.data_range

    @property
    def pad_to_multiple(self) -> int | None:
        return self.document.adapter_spec().pad_to_multiple


@dataclass(frozen=True)
class UntranslatedBranch:
    """A branch left out, with the line of its ``if``/``elif``, the reason, and the manifest lines
    to write by hand instead (empty when the branch tests no model id)."""

    line: int
    model_ids: tuple[int, ...]
    reason: str
    manifest_lines: tuple[str, ...] = ()


@dataclass(frozen=True)
class ImportReport:
    """What ``import_ntire`` translated, wrote and left out."""

    test_demo: Path
    out_dir: Path
    translated: tuple[TranslatedBranch, ...]
    untranslated: tuple[UntranslatedBranch, ...]
    written: tuple[Path, ...]

    def summary_text(self) -> str:
        total = len(self.translated) + len(self.untranslated)
        lines = [f"Translated {len(self.translated)} of {total} branches of {self.test_demo} "
                 f"into {self.out_dir}:"]
        for branch, path in zip(self.translated, self.written):
            lines.append(f"  {path.name}  model_id {branch.model_id} (line {branch.line})")
            lines.extend(f"      note: {note}" for note in branch.notes)
        if self.untranslated:
            lines.append(f"Not translated ({len(self.untranslated)}); "
                         "write these manifests by hand:")
            for branch in self.untranslated:
                ids = ", ".join(str(i) for i in branch.model_ids) or "none"
                lines.append(f"  line {branch.line} (model_id {ids}): {branch.reason}")
                if branch.manifest_lines:
                    lines.append("      write instead:")
                    lines.extend(f"        {line}" for line in branch.manifest_lines)
        return "\n".join(lines)
