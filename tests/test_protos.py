"""The protos are the single source of truth: the committed stubs must be what they
generate, and buf lint (STANDARD) must pass."""
from __future__ import annotations

import filecmp
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_generated_stubs_match_the_protos(tmp_path):
    protos = sorted(str(p.relative_to(REPO / "protos")) for p in (REPO / "protos").rglob("*.proto"))
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-Iprotos", f"--python_out={tmp_path}",
                    f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}", *protos], cwd=REPO, check=True)
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.py*"))
    assert generated, "protoc generated nothing"
    stale = [str(p) for p in generated if not (REPO / p).exists() or not filecmp.cmp(tmp_path / p, REPO / p, shallow=False)]
    assert not stale, f"stubs out of date, run scripts/generate.sh: {stale}"


def buf_binary() -> str | None:
    local = REPO / ".local" / "node_modules" / ".bin" / "buf"
    return str(local) if local.exists() else shutil.which("buf")


def test_buf_lint_passes():
    buf = buf_binary()
    if buf is None:
        pytest.skip("buf is not installed (scripts/install.sh installs it from the npm registry)")
    result = subprocess.run([buf, "lint"], cwd=REPO / "protos", capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
