"""The compile pipeline: committed artifacts are byte-identical to a fresh compile."""

from __future__ import annotations

import json

from dapp import compiler
from dapp.cli import main


def test_compile_check_passes_on_committed_artifacts(capsys):
    assert main(["compile", "--check"]) == 0
    assert "matches a fresh compile" in capsys.readouterr().out


def test_compile_check_fails_when_an_artifact_is_tampered(tmp_path):
    files = compiler.compile_project()
    compiler.write_artifacts(files, tmp_path)
    assert compiler.check_artifacts(files, tmp_path) == []
    target = tmp_path / "EnergyMarket.json"
    data = json.loads(target.read_text())
    data["bytecode"] = data["bytecode"][:-2] + ("00" if data["bytecode"][-2:] != "00" else "01")
    target.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    (tmp_path / "Stale.json").write_text("{}\n")
    problems = compiler.check_artifacts(files, tmp_path)
    assert "artifact differs from a fresh compile: EnergyMarket.json" in problems
    assert "stale artifact: Stale.json" in problems


def test_artifacts_record_compiler_and_settings():
    data = json.loads((compiler.BUILD_DIR / "EnergyToken.json").read_text())
    assert data["compiler"]["version"].startswith(compiler.SOLC_VERSION + "+commit.")
    assert data["compiler"]["settings"]["evmVersion"] == compiler.EVM_VERSION
    assert data["bytecode"].startswith("0x60") and len(data["abi"]) > 10
