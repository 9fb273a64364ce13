"""The benchmark harness runs end to end on a tiny case (no timings are checked: they belong to `make bench`)."""

from __future__ import annotations

from pathlib import Path

import pytest

run = pytest.importorskip("benchmarks.run")


def test_harness_prints_the_table_and_targets_and_cleans_up(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = run.main(["--scale", "tiny", "--runs", "1", "--cases", "gpt2", "--formats", "safetensors",
                     "--in-process", "--tmp", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    assert "| safetensors | save |" in out and "| safetensors | load (verified) |" in out
    assert "error" not in out
    assert "safetensors save vs save_file" in out and "targets met" in out
    assert "| safetensors | read_manifest |" in out
    assert "| safetensors | stats vs a plain torch pass |" in out and "| safetensors | diff vs a plain pass" in out
    assert "stats vs a plain float64 torch pass over load_file" in out and "stats: extra peak" in out
    assert list(tmp_path.iterdir()) == []  # the temporary checkpoints are gone


def test_the_generated_cases_are_deterministic_and_tied() -> None:
    from benchmarks import cases

    spec = cases.spec("gpt2", "tiny")
    a, b = cases.state_dict(spec), cases.state_dict(spec)
    assert a[cases.ALIAS] is a[cases.CANONICAL]
    assert all(a[name].equal(b[name]) for name in a)
    assert sum(t.numel() * 4 for n, t in a.items() if n != cases.ALIAS) == spec.nbytes


def test_sharded_phase_runs_and_reports_its_targets(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("huggingface_hub")
    code = run.main(["--scale", "tiny", "--runs", "1", "--cases", "big", "--formats", "safetensors",
                     "--in-process", "--tmp", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    section = out[out.index("### sharded folder: big"):]
    assert "error" not in section.split("### Targets")[0], section
    for needle in ("**not atomic**", "load_into a meta-device model", "convert folder -> one file",
                   "big: load_into extra peak", "big: convert one file -> folder vs one file -> one file"):
        assert needle in out, needle
    assert list(tmp_path.iterdir()) == []


def test_the_meta_model_of_a_case_has_its_names_shapes_and_tie() -> None:
    from benchmarks import cases, sharded

    spec = cases.spec("xl", "tiny")
    model = sharded.meta_model(spec)
    params = dict(model.named_parameters(remove_duplicate=False))
    assert {n: tuple(p.shape) for n, p in params.items() if n != cases.ALIAS} == dict(spec.shapes)
    assert params[cases.ALIAS] is params[cases.CANONICAL] and params[cases.CANONICAL].is_meta
