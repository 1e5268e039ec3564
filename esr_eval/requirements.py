"""What a submission's code imports, found statically: third-party modules, their distributions,
what this environment lacks, and whether one needs CUDA.

Contract
--------
* :func:`import_sites` walks the model file's syntax tree (``ast``; nothing is imported or run):
  every ``import x.y`` / ``from x import y``, at any depth (functions, ``try`` blocks), with its
  file, line and source line. A local module (a ``.py`` file or a package folder beside an
  importing file, or under the submissions root) is followed into, never reported; relative
  imports are local. The standard library (``sys.stdlib_module_names``) is left out.
* :func:`distribution_for` maps a top-level module name to the pip distribution that provides it
  from the table ``module_distributions.yaml`` beside this module (``cv2`` ->
  ``opencv-python-headless``, ``PIL`` -> ``pillow``, ...); a name the table lacks is its own
  distribution with ``_`` as ``-``. The table is data: a line per module, extendable.
* :func:`missing` lists the sites whose module this interpreter cannot find
  (``importlib.util.find_spec`` on the top-level name, which does not run the package).
* :func:`cuda_only` lists the sites that import a CUDA-only extension (``cuda_only:`` in the
  table, e.g. ``mamba_ssm``): such a submission cannot run on a CPU.
* :func:`declared_requirements` is what a manifest's ``requirements:`` should say: the
  distributions of the third-party imports, less those the evaluator itself provides (torch and
  esr-eval's own dependencies, :func:`evaluator_distributions`), which a submission never installs.
Imports neither torch nor Ray.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path

import yaml

TABLE = Path(__file__).with_name("module_distributions.yaml")
MAX_LOCAL_FILES = 200  # a model file and its local helpers; a guard against a pathological tree


@dataclass(frozen=True)
class ImportSite:
    """One third-party import: the top-level module, where it is imported and the line as written."""

    module: str
    file: Path
    line: int
    text: str

    def describe(self, root: Path) -> str:
        where = self.file.relative_to(root) if self.file.is_relative_to(root) else self.file
        return f"{self.module} ({where}:{self.line}: `{self.text}`)"


@cache
def _table() -> dict:
    return yaml.safe_load(TABLE.read_text(encoding="utf-8"))


def distribution_for(module: str) -> str:
    """The pip distribution that provides top-level ``module``."""
    return _table()["distributions"].get(module, module.replace("_", "-"))


def _local(name: str, folders: list[Path]) -> Path | None:
    """The local file (module or package ``__init__``) ``name`` resolves to in ``folders``, if any."""
    parts = name.split(".")
    for folder in folders:
        base = folder.joinpath(*parts)
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
        if base.is_dir():  # a namespace package: local, nothing to follow
            return base
    return None


def _imports(tree: ast.AST) -> list[tuple[str, int, int]]:
    """(module name, relative level, line) of every import; ``from . import a, b`` gives ``a`` and
    ``b`` at their level (each may be a module)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, 0, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.module, node.level, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            found += [(alias.name, node.level, node.lineno) for alias in node.names]
    return found


def import_sites(model_file: Path, root: Path) -> list[ImportSite]:
    """Every third-party import of ``model_file`` and the local files it imports, in file order."""
    root, start = Path(root).resolve(), Path(model_file).resolve()
    queue, seen, sites = [start], {start}, []
    while queue and len(seen) <= MAX_LOCAL_FILES:
        path = queue.pop(0)
        if path.is_dir():
            continue
        source = path.read_text(encoding="utf-8", errors="replace")
        try:
            tree = ast.parse(source, filename=str(path))
        except SyntaxError:
            continue  # the import stage reports it, with the interpreter's own message
        lines = source.splitlines()
        for name, level, line in _imports(tree):
            top = name.split(".")[0]
            if level:
                local = _local(name, [path.parents[level - 1]]) if level <= len(path.parents) else None
            elif top in sys.stdlib_module_names:
                continue
            else:
                local = _local(name, [path.parent, root]) or _local(top, [path.parent, root])
                if local is None:
                    sites.append(ImportSite(top, path, line, lines[line - 1].strip() if line <= len(lines) else ""))
                    continue
            if local is not None and local not in seen:
                seen.add(local)
                queue.append(local)
    return sites


def missing(sites: list[ImportSite]) -> list[ImportSite]:
    """The sites whose module this interpreter cannot find (each module once, first site)."""
    absent, reported = [], set()
    for site in sites:
        if site.module not in reported and importlib.util.find_spec(site.module) is None:
            reported.add(site.module)
            absent.append(site)
    return absent


def cuda_only(sites: list[ImportSite]) -> list[ImportSite]:
    """The sites that import a CUDA-only extension."""
    known = set(_table()["cuda_only"])
    return [site for site in sites if site.module in known]


def requirements_for(sites: list[ImportSite]) -> tuple[str, ...]:
    """The distributions the sites need, sorted, each once."""
    return tuple(sorted({distribution_for(site.module) for site in sites}))


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@cache
def evaluator_distributions() -> frozenset[str]:
    """Distributions the evaluator brings (its declared dependencies and their extras, and torch)."""
    try:
        declared = metadata.requires("esr-eval") or []
    except metadata.PackageNotFoundError:
        declared = []
    names = {_normal(re.split(r"[\s\[<>=!~;]", spec, maxsplit=1)[0]) for spec in declared}
    return frozenset(names | {"torch", "numpy"})


def declared_requirements(sites: list[ImportSite]) -> tuple[str, ...]:
    """The ``requirements:`` a manifest should declare for these sites."""
    provided = evaluator_distributions()
    return tuple(name for name in requirements_for(sites) if _normal(name) not in provided)
