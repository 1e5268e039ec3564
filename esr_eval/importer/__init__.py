"""Translate an NTIRE-style ``test_demo.py`` into submission manifests, without running it.

Contract
--------
``import_ntire(checkout, out_dir)`` reads ``checkout/test_demo.py`` with :mod:`ast` only; neither
that file nor any model file is imported or executed. It finds ``def select_model(args, device)``
and its ``if model_id == N: … elif …`` chain, and folds each branch statically into one manifest
``out_dir/teamNN_Name.yaml`` (file stem = submission id), built and validated as the models of
:mod:`esr_eval.manifest`, with paths relative to the checkout root (the submissions root). A
branch that cannot be folded is reported with its line number, the construct and the reason,
never guessed, followed by the manifest lines to write by hand. A three-digit ``model_id`` (a
team's extra entry) becomes a three-digit ``team_id``. Units:
``data_range`` is the pixel value of white (1.0 or 255.0), ``scale`` is always 4,
``pad_to_multiple`` is in LR pixels.

Modules, by what they recognise:

* :mod:`~esr_eval.importer.chain`: the ``select_model`` chain and the ids of its branches;
* :mod:`~esr_eval.importer.expressions`: literal folding (constants, containers, f-strings,
  arithmetic, ``os.path.join``, ``dict(...)``, names bound in the branch);
* :mod:`~esr_eval.importer.model_idioms`: the model class, its constructor arguments, and the
  method calls after the load (``after_load``);
* :mod:`~esr_eval.importer.checkpoint_idioms`: ``torch.load``, key selection (also through a key
  variable), ``strict``;
* :mod:`~esr_eval.importer.wrappers`: reflect-pad forward wrappers → ``adapter``;
* :mod:`~esr_eval.importer.branch`: the statements of one branch → a translated branch;
* :mod:`~esr_eval.importer.emit`: manifest models → YAML;
* :mod:`~esr_eval.importer.draft`: the manifest lines shown for a branch left out;
* :mod:`~esr_eval.importer.translate`: the entry points; :mod:`~esr_eval.importer.report`:
  their results; :mod:`~esr_eval.importer.values`, :mod:`~esr_eval.importer.syntax`: shared
  symbolic values and AST helpers.
"""

from esr_eval.importer.report import ImportReport, NtireImportError, TranslatedBranch, UntranslatedBranch
from esr_eval.importer.translate import TEST_DEMO_FILE, import_ntire, translate_test_demo

__all__ = ["ImportReport", "NtireImportError", "TEST_DEMO_FILE", "TranslatedBranch",
           "UntranslatedBranch", "import_ntire", "translate_test_demo"]
