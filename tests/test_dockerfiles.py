"""The images' build context, checked without a Docker engine: what each Dockerfile COPYs must build the whole
package (a folder left out of the COPY lines would only show up at `docker build` time otherwise)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = re.findall(r'^"ecoserve\.(\w+)" = "(\w+)"$', (ROOT / "pyproject.toml").read_text(), re.M)


def copied_paths(dockerfile: Path) -> list[str]:
    paths = []
    for line in dockerfile.read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            paths += words[1:-1]
    return paths


@pytest.mark.parametrize("name", ["Dockerfile.worker", "Dockerfile.router"])
def test_dockerfile_copies_everything_the_package_needs(name, tmp_path):
    context = tmp_path / "context"
    context.mkdir()
    for path in copied_paths(ROOT / name):
        src = ROOT / path
        (shutil.copytree if src.is_dir() else shutil.copy)(src, context / path)
    out = tmp_path / "wheel"
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out)]
    subprocess.run([*build, str(context)], check=True, capture_output=True, timeout=300)
    (wheel,) = out.glob("*.whl")
    built = set(zipfile.ZipFile(wheel).namelist())
    assert len(PACKAGE_DIRS) >= 8
    for package, folder in PACKAGE_DIRS:
        for source in (ROOT / folder).glob("*.py"):
            assert f"ecoserve/{package}/{source.name}" in built, f"{name} leaves out {folder}/{source.name}"
