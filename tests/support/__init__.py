"""Test support shared by several test files: Ray instances and driver runs (``ray_runs``), the
fault matrix (``faults``) and synthetic run folders (``synthetic``). Not part of the package."""
