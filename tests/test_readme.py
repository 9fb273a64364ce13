"""The README's examples run as written (so they cannot rot), and so does `make demo`."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from paramio import demo
from paramio.cli import app

README = Path(__file__).resolve().parent.parent / "README.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(encoding="utf-8"), flags=re.S | re.M)


def test_readme_python_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code = blocks("python")
    assert code, "the README has no python example"
    namespace: dict = {"__name__": "readme"}
    for block in code:  # one namespace, in order: later blocks build on earlier ones
        exec(compile(block, str(README), "exec"), namespace)
    assert (tmp_path / "mlp.safetensors").exists()


def test_readme_cli_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each `paramio ...` line, in order, with the exit code its comment announces (0 when none)."""
    monkeypatch.chdir(tmp_path)
    lines = [line for block in blocks("sh") for line in block.splitlines() if line.startswith("paramio ")]
    assert len(lines) >= 10
    runner = CliRunner()
    for line in lines:
        command, _, comment = line.partition("#")
        expected = re.match(r"\s*exit (\d)", comment)
        result = runner.invoke(app, shlex.split(command)[1:])
        want = int(expected.group(1)) if expected else 0
        assert result.exit_code == want, f"{line}\nstdout: {result.stdout}\nstderr: {result.stderr}"


def test_make_demo_restores_every_tie(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.main(["--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "model[2].weight is model[4].weight" in out and "model.embed.weight is model.head.weight" in out
    assert "False" not in out.replace("(before loading: False)", "")
    # The "next:" hint works as typed in a shell whose PATH does not have the venv (make demo's situation).
    (hint,) = [line.removeprefix("next: ") for line in out.splitlines() if line.startswith("next: ")]
    proc = subprocess.run(shlex.split(hint), capture_output=True, text=True, env={**os.environ, "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, (hint, proc.stderr)
    assert "embed.weight" in proc.stdout and "mean" in proc.stdout
    assert "| sharded " in out.replace("│", "|") and (tmp_path / "tiny_lm-sharded" / "model.safetensors.index.json").exists()
    written = {p.name for p in tmp_path.iterdir()}
    for case in ("tied_mlp", "tiny_lm"):  # every format, for each example
        for suffix in (".safetensors", ".h5", ".onnx", ".pt"):
            assert f"{case}{suffix}" in written, sorted(written)
