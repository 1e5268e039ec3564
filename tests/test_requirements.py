"""esr_eval.requirements: third-party imports found statically (nothing run), local files followed,
modules mapped to distributions, what this environment lacks, CUDA-only extensions."""

from __future__ import annotations

import textwrap
from pathlib import Path

from esr_eval.requirements import cuda_only, distribution_for, import_sites, missing, requirements_for

MARKER = "ESR_EVAL_REQUIREMENTS_RAN"


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def _team(root: Path) -> Path:
    """A model file importing third-party, stdlib and local modules, some deep inside the code."""
    _write(root / "models" / "team07_helpers.py", """
        import cv2
        from mmcv.cnn import ConvModule
        from . import team07_blocks
    """)
    _write(root / "models" / "team07_blocks.py", "import einops.layers.torch as el\nimport os\n")
    _write(root / "models" / "team07_pkg" / "__init__.py", "from .inner import thing\n")
    _write(root / "models" / "team07_pkg" / "inner.py", "import timm\nthing = 1\n")
    return _write(root / "models" / "team07_Net.py", f"""
        import math, os.path
        import torch
        from torch import nn
        import numpy as np
        import team07_helpers
        from team07_pkg import thing
        open({MARKER!r}, "w").close()   # never runs: the file is only parsed

        class Net(nn.Module):
            def forward(self, x):
                try:
                    from mamba_ssm import Mamba
                except ImportError:
                    Mamba = None
                return x
    """)


def test_sites_follow_local_files_and_skip_the_standard_library(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sites = import_sites(_team(tmp_path), tmp_path)
    assert [s.module for s in sites] == ["torch", "torch", "numpy", "mamba_ssm", "cv2", "mmcv", "einops", "timm"]
    mamba = next(s for s in sites if s.module == "mamba_ssm")
    assert (mamba.file.name, mamba.line, mamba.text) == ("team07_Net.py", 13, "from mamba_ssm import Mamba")
    assert not (tmp_path / MARKER).exists()  # parsed, never run


def test_missing_lists_every_absent_module_once_with_its_line(tmp_path):
    sites = import_sites(_team(tmp_path), tmp_path)
    absent = {s.module: s.describe(tmp_path) for s in missing(sites)}
    assert set(absent) == {"mamba_ssm", "cv2", "mmcv", "timm", "einops"}  # torch and numpy are installed here
    assert absent["mmcv"] == "mmcv (models/team07_helpers.py:3: `from mmcv.cnn import ConvModule`)"


def test_distributions_come_from_the_table(tmp_path):
    sites = import_sites(_team(tmp_path), tmp_path)
    assert distribution_for("cv2") == "opencv-python-headless" and distribution_for("mmcv") == "mmcv-lite"
    assert distribution_for("mamba_ssm") == "mamba-ssm" and distribution_for("PIL") == "pillow"
    assert requirements_for(missing(sites)) == ("einops", "mamba-ssm", "mmcv-lite", "opencv-python-headless", "timm")


def test_cuda_only_extensions_are_named(tmp_path):
    sites = import_sites(_team(tmp_path), tmp_path)
    assert [s.module for s in cuda_only(sites)] == ["mamba_ssm"]
    plain = _write(tmp_path / "models" / "team08_Plain.py", "import torch\nimport einops\n")
    assert cuda_only(import_sites(plain, tmp_path)) == []


def test_a_file_that_does_not_parse_yields_no_sites(tmp_path):
    broken = _write(tmp_path / "models" / "team09_Broken.py", "import einops\ndef (:\n")
    assert import_sites(broken, tmp_path) == []
