"""The layers hold: import-linter's contracts (pyproject.toml) pass, and catch a crossing import."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / ".ci" / "lint-imports"


def lint(root: Path) -> subprocess.CompletedProcess[str]:
    env_bin = str(Path(sys.executable).parent)
    return subprocess.run(
        ["bash", str(root / ".ci" / "lint-imports")],
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": f"{env_bin}:/usr/bin:/bin"},
    )


def test_import_contracts_kept():
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_client_importing_the_core_breaks_a_contract(tmp_path: Path):
    # A copy of the checkout whose client gained one crossing import, the rest linked as it is.
    for name in ("telelens", "core", "server", "protos", "pyproject.toml", ".ci"):
        (tmp_path / name).symlink_to(ROOT / name)
    shutil.copytree(ROOT / "client", tmp_path / "client", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "client" / "crossing.py").write_text("from telelens.core import hooked_transformer\n")
    result = lint(tmp_path)
    assert result.returncode != 0
    assert "telelens.client.crossing -> telelens.core" in result.stdout
