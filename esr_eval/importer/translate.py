"""The two entry points: translate every branch of ``test_demo.py``, and write the manifests.

Contract
--------
``translate_test_demo(checkout)`` parses ``checkout/test_demo.py`` with :mod:`ast` only (neither
it nor any model file is imported or run), folds each id of the ``select_model`` chain in chain
order, and returns the translated branches and the untranslated ones (sorted by line); an id
already handled by an earlier branch is reported, never translated twice. It writes nothing.
``import_ntire(checkout, out_dir)`` then writes ``out_dir/<submission id>.yaml`` for each
translated branch (created only once the file was read) and returns an :class:`ImportReport`.
A file that is missing, not Python, or without a ``select_model`` chain raises
:class:`NtireImportError` before anything is written.
"""

from __future__ import annotations

import ast
from pathlib import Path

from esr_eval.importer.branch import translate_branch
from esr_eval.importer.chain import find_select_model, split_chain
from esr_eval.importer.emit import manifest_text
from esr_eval.importer.model_idioms import module_level_imports
from esr_eval.importer.report import ImportReport, NtireImportError, TranslatedBranch, UntranslatedBranch
from esr_eval.importer.values import Untranslatable
from esr_eval.importer.wrappers import model_specific_blocks

TEST_DEMO_FILE = "test_demo.py"


def import_ntire(checkout: Path, out_dir: Path, *, checksum: bool = False,
                 test_demo: str = TEST_DEMO_FILE) -> ImportReport:
    """Write one manifest per translatable branch of ``checkout/test_demo`` into ``out_dir``."""
    checkout = Path(checkout)
    out_dir = Path(out_dir)
    translated, untranslated = translate_test_demo(checkout, checksum=checksum, test_demo=test_demo)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for branch in translated:
        path = out_dir / f"{branch.submission_id}.yaml"
        path.write_text(manifest_text(branch, test_demo), encoding="utf-8")
        written.append(path)
    return ImportReport(checkout / test_demo, out_dir, translated, untranslated, tuple(written))


def translate_test_demo(checkout: Path, *, checksum: bool = False,
                        test_demo: str = TEST_DEMO_FILE,
                        ) -> tuple[tuple[TranslatedBranch, ...], tuple[UntranslatedBranch, ...]]:
    """Fold every branch of the ``select_model`` chain; writes nothing."""
    checkout = Path(checkout)
    path = checkout / test_demo
    if not path.is_file():
        raise NtireImportError(f"{path}: not found; pass the root of the NTIRE repository "
                               f"(the folder holding {test_demo}, models/ and model_zoo/)")
    try:
        module = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except SyntaxError as error:
        raise NtireImportError(f"{path}:{error.lineno}: not valid Python ({error.msg}); "
                               "fix the file so that `python -m py_compile` accepts it") from error
    select_model = find_select_model(module, path)
    prelude, branches, untranslated = split_chain(select_model, path)
    wrappers = model_specific_blocks(module, select_model)
    base_env = module_level_imports(module, checkout)
    runtime_names = frozenset(a.arg for a in select_model.args.args) - {"model_id"}
    translated = []
    seen: dict[int, int] = {}
    for ids, branch in branches:
        for model_id in ids:
            if model_id in seen:
                untranslated.append(UntranslatedBranch(branch.lineno, (model_id,), (
                    f"model_id {model_id} is already handled by the branch at line "
                    f"{seen[model_id]}, so this branch never runs")))
                continue
            seen[model_id] = branch.lineno
            try:
                translated.append(translate_branch(
                    model_id, branch, prelude, base_env, runtime_names, checkout,
                    wrappers.get(model_id, ()), checksum, test_demo))
            except Untranslatable as error:
                untranslated.append(UntranslatedBranch(branch.lineno, (model_id,), error.reason,
                                                       error.manifest_lines))
    untranslated.sort(key=lambda b: b.line)
    return tuple(translated), tuple(untranslated)
