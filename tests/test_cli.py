"""The `paramio` command: a user exports, inspects, validates, converts and compares checkpoints from the
shell, and gets exit code 0 / 1 (a finding) / 2 (bad usage or input) with one clear line on errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import paramio
from paramio.cli import app
from paramio.examples import tied_mlp
from paramio.formats.safetensors import SafetensorsReader
from paramio.formats.registry import FORMATS, SUFFIXES
from paramio.manifest import json_schemas
from paramio.stats import tensor_stats

runner = CliRunner()
EXAMPLES = "paramio.examples"


def run(*args: str | Path, code: int = 0):
    """Run `paramio ARGS` in-process and check its exit code."""
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, (
        f"paramio {' '.join(map(str, args))}: exit {result.exit_code}, expected {code}\n"
        f"stdout: {result.stdout}\nstderr: {result.stderr}\n{result.exception!r}"
    )
    return result


def one_line_error(result, *needles: str) -> str:
    """The error is one line on stderr, names what it is about, and shows no traceback."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def console_script() -> list[str]:
    """The installed `paramio` script, or `python -m paramio` where it is not on disk."""
    script = Path(sys.executable).parent / "paramio"
    return [str(script)] if script.exists() else [sys.executable, "-m", "paramio"]


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def user_imports(monkeypatch: pytest.MonkeyPatch):
    """Undo what importing a user's model file does to sys.path and sys.modules."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        del sys.modules[name]


@pytest.fixture
def mlp_file(here: Path) -> Path:
    run("export", f"{EXAMPLES}:tied_mlp", "-o", "mlp.safetensors")
    return here / "mlp.safetensors"


# -- export -------------------------------------------------------------------------------------------------


def test_version() -> None:
    assert run("--version").stdout.strip() == f"paramio {paramio.__version__}"


def test_export_a_factory_keeps_the_tie(mlp_file: Path) -> None:
    ck = paramio.load(mlp_file)
    assert ck["2.weight"] is ck["4.weight"] and ck["2.bias"] is ck["4.bias"]
    model = tied_mlp()
    assert torch.equal(ck["4.weight"], model[4].weight)
    assert ck.manifest.model_class == "torch.nn.modules.container.Sequential"


def test_export_status_goes_to_stderr_and_nothing_to_stdout(here: Path) -> None:
    result = run("export", f"{EXAMPLES}:tiny_lm", "-o", "lm.safetensors")
    assert result.stdout == ""
    assert "lm.safetensors" in result.stderr and "1 tie group" in result.stderr


def test_export_lazy_model_needs_an_example_input(here: Path) -> None:
    result = run("export", f"{EXAMPLES}:lazy_tied_mlp", "-o", "lazy.safetensors", code=2)
    one_line_error(result, "lazy_tied_mlp", "0.weight", "uninitialized", "--example-input")
    assert not (here / "lazy.safetensors").exists()

    run("export", f"{EXAMPLES}:lazy_tied_mlp", "--example-input", "2x4", "-o", "lazy.safetensors")
    ck = paramio.load(here / "lazy.safetensors")
    assert ck["2.weight"] is ck["4.weight"] and ck["0.weight"].shape == (8, 4)
    # the example input comes from its own generator: the weights are the eager factory's
    run("export", f"{EXAMPLES}:tied_mlp", "-o", "eager.safetensors")
    run("diff", "lazy.safetensors", "eager.safetensors")


def test_export_wrong_example_input_is_a_one_line_error(here: Path) -> None:
    result = run("export", f"{EXAMPLES}:lazy_tied_mlp", "--example-input", "2x5:int64", "-o", "x.safetensors",
                 code=2)
    one_line_error(result, "lazy_tied_mlp", "forward pass", "2x5")


def test_export_with_gradients_from_a_backward_pass(here: Path) -> None:
    run("export", f"{EXAMPLES}:lazy_tied_mlp", "--example-input", "3x4", "--grads", "-o", "g.safetensors")
    ck = paramio.load(here / "g.safetensors")
    assert set(ck.grads) == {"0.weight", "0.bias", "2.weight", "2.bias", "6.weight", "6.bias"}  # one per tensor
    assert ck.grads["2.weight"].abs().sum() > 0


def test_export_options_dtype_metadata_checksum(here: Path) -> None:
    run("export", f"{EXAMPLES}:tiny_lm", "-o", "lm.safetensors", "--dtype", "bf16", "-m", "run=7",
        "--metadata", "note=a=b", "--checksum", "sha256")
    manifest = paramio.read_manifest(here / "lm.safetensors")
    dtypes = {t.name: t.dtype for t in manifest.tensors}
    assert dtypes["embed.weight"] == "bfloat16" and dtypes["causal_mask"] == "bool"
    assert manifest.metadata == {"note": "a=b", "run": "7"}
    assert all(t.checksum.startswith("sha256:") for t in manifest.tensors)
    run("export", f"{EXAMPLES}:tiny_lm", "-o", "plain.safetensors", "--checksum", "none")
    assert all(t.checksum is None for t in paramio.read_manifest(here / "plain.safetensors").tensors)


def test_export_a_checkpoint_file_to_another_file(mlp_file: Path, here: Path) -> None:
    run("export", mlp_file, "-o", "copy.safetensors", "-m", "from=cli")
    ck = paramio.load(here / "copy.safetensors")
    assert ck["2.weight"] is ck["4.weight"] and ck.metadata == {"from": "cli"}
    run("diff", mlp_file, "copy.safetensors")


def test_export_a_torch_state_dict(here: Path) -> None:
    model = tied_mlp()
    torch.save(model.state_dict(), here / "sd.pt")
    run("export", "sd.pt", "-o", "sd.safetensors")
    ck = paramio.load(here / "sd.safetensors")
    assert ck["2.weight"] is ck["4.weight"]
    assert torch.equal(ck["2.weight"], model[2].weight)


@pytest.mark.parametrize(
    "source, needle",
    [
        ("no_such_module_xyz:make", "no_such_module_xyz"),
        (f"{EXAMPLES}:no_such_factory", "no_such_factory"),
        (f"{EXAMPLES}:TinyLM.forward", "forward"),  # a callable that fails when called
        ("json:dumps", "dumps"),  # a callable that does not return a model
        ("missing/file.py:make", "missing/file.py"),
    ],
)
def test_export_a_bad_factory_is_a_one_line_error(here: Path, source: str, needle: str) -> None:
    result = run("export", source, "-o", "x.safetensors", code=2)
    one_line_error(result, source, needle)


@pytest.mark.parametrize("option", [["--example-input", "2xz"], ["--dtype", "int7"], ["--metadata", "novalue"],
                                    ["--checksum", "md5"], ["--format", "zip"], ["--no-such-option"]])
def test_export_bad_usage_exits_2(here: Path, option: list[str]) -> None:
    run("export", f"{EXAMPLES}:tied_mlp", "-o", "x.safetensors", *option, code=2)
    assert not (here / "x.safetensors").exists()


def test_example_input_on_a_file_is_bad_usage(mlp_file: Path) -> None:
    run("export", mlp_file, "-o", "x.safetensors", "--example-input", "2x4", code=2)


def test_example_input_int_dtypes_and_bounds() -> None:
    from paramio.cli.options import example_tensors, parse_example_input

    tokens, mask, half = example_tensors([parse_example_input("2x8:int64:32"), parse_example_input("3:bool"),
                                          parse_example_input("1x2:bf16")])
    assert tokens.dtype == torch.int64 and tokens.shape == (2, 8) and 0 <= tokens.min() and tokens.max() < 32
    assert mask.dtype == torch.bool and half.dtype == torch.bfloat16


MYMODELS = """
from torch import nn

def tied():
    shared = nn.Linear(3, 3)
    return nn.Sequential(shared, nn.Tanh(), shared)
"""


def test_export_from_the_users_own_module(tmp_path: Path) -> None:
    """A factory in the user's current folder works with the installed console script, which (unlike
    `python -m`) does not put the current folder on sys.path by itself."""
    (tmp_path / "mymodels.py").write_text(MYMODELS)
    env = {**os.environ, "PYTHONPATH": ""}
    proc = subprocess.run([*console_script(), "export", "mymodels:tied", "-o", "mine.safetensors"], cwd=tmp_path,
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    ck = paramio.load(tmp_path / "mine.safetensors")
    assert ck["0.weight"] is ck["2.weight"]


def test_export_from_a_python_file_path(here: Path, user_imports: None) -> None:
    (here / "models").mkdir()
    (here / "models" / "paramio_test_models.py").write_text(MYMODELS)
    run("export", "models/paramio_test_models.py:tied", "-o", "mine.safetensors")
    assert paramio.read_manifest(here / "mine.safetensors").ties[0].aliases == ("2.weight",)


def test_python_dash_m_is_the_same_command(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "paramio", "inspect", "missing.safetensors"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: missing.safetensors: no such file"]


# -- errors ---------------------------------------------------------------------------------------------------


def test_missing_file(here: Path) -> None:
    one_line_error(run("inspect", "nope.safetensors", code=2), "nope.safetensors", "no such file")


def test_unknown_suffix(here: Path) -> None:
    (here / "weights.xyz").write_bytes(b"1234")
    one_line_error(run("inspect", "weights.xyz", code=2), "weights.xyz", "unknown suffix")


def test_corrupt_file(here: Path) -> None:
    (here / "bad.safetensors").write_bytes(b"this is not a checkpoint at all")
    for command in (["inspect"], ["validate"], ["inspect", "--stats"], ["signature"]):
        one_line_error(run(*command, "bad.safetensors", code=2), "bad.safetensors")
    one_line_error(run("convert", "bad.safetensors", "out.safetensors", code=2), "bad.safetensors")
    assert not (here / "out.safetensors").exists()
    one_line_error(run("diff", "bad.safetensors", "bad.safetensors", code=2), "bad.safetensors")


def test_debug_shows_the_traceback_without_locals(here: Path) -> None:
    (here / "bad.safetensors").write_bytes(b"garbage!" * 4)
    result = run("--debug", "inspect", "bad.safetensors", code=2)
    assert "Traceback" in result.stderr and "safetensors.py" in result.stderr
    assert "locals" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: bad.safetensors")


def test_a_bug_is_an_internal_error_not_a_finding(mlp_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(paramio, "read_manifest", broken)
    line = one_line_error(run("inspect", mlp_file, code=3), "internal error", "boom", "--debug")
    assert "second line" not in line


# -- inspect --------------------------------------------------------------------------------------------------


def test_inspect_table_lists_every_name_and_tie(mlp_file: Path) -> None:
    out = run("inspect", mlp_file).stdout
    for name in ("0.weight", "2.weight", "4.weight", "2.bias", "4.bias", "6.bias"):
        assert name in out
    assert "alias of 2.weight" in out and "aliases: 4.weight" in out
    checksum = paramio.read_manifest(mlp_file).entry("2.weight").checksum
    assert checksum in out


def test_inspect_reads_no_tensor_data(mlp_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_data(self, name):
        raise AssertionError(f"inspect read tensor {name}")

    monkeypatch.setattr(SafetensorsReader, "read", no_data)
    run("inspect", mlp_file)
    run("inspect", "--json", mlp_file)
    result = run("inspect", "--stats", mlp_file, code=3)  # --stats does read, and here that is a bug
    assert "inspect read tensor" in result.stderr


def test_inspect_json_is_the_manifest(mlp_file: Path) -> None:
    payload = json.loads(run("inspect", "--json", mlp_file).stdout)
    assert payload["format"] == "safetensors" and payload["file"] == str(mlp_file)
    assert paramio.Manifest.from_json(json.dumps(payload["manifest"])) == paramio.read_manifest(mlp_file)
    assert "stats" not in payload


def test_inspect_stats_in_float64(mlp_file: Path) -> None:
    payload = json.loads(run("inspect", "--json", "--stats", mlp_file).stdout)
    weight = tied_mlp()[2].weight.detach().double()
    stats = payload["stats"]["2.weight"]
    assert stats["mean"] == pytest.approx(float(weight.mean()))
    assert stats["std"] == pytest.approx(float(weight.std(correction=0)))
    assert stats["max"] == pytest.approx(float(weight.max()))
    assert stats["l2_norm"] == pytest.approx(float(weight.norm()))
    table = run("inspect", "--stats", mlp_file).stdout
    assert "mean" in table and "norm" in table


def test_inspect_stats_of_awkward_tensors(here: Path) -> None:
    tensors = {
        "empty": torch.zeros(0, 3),
        "flags": torch.tensor([True, False, True, True]),
        "ids": torch.tensor([1, 2, 3], dtype=torch.int64),
        "fp8": torch.tensor([0.5, -2.0], dtype=torch.float8_e4m3fn),
        "one": torch.tensor([3.0]),
        "inf": torch.tensor([1.0, float("inf")]),
    }
    paramio.save(tensors, here / "odd.safetensors")
    stats = json.loads(run("inspect", "--json", "--stats", "odd.safetensors").stdout)["stats"]
    figures = ("mean", "std", "min", "max", "l2_norm")
    assert [stats["empty"][k] for k in figures] == [None] * 5 and stats["empty"]["numel"] == 0
    assert stats["flags"]["mean"] == 0.75 and stats["flags"]["max"] == 1
    assert stats["ids"]["mean"] == 2.0 and stats["ids"]["min"] == 1.0
    assert stats["fp8"]["min"] == -2.0 and stats["fp8"]["max"] == 0.5
    assert stats["one"]["std"] == 0.0
    # the figures are over the finite values, the infinity counted apart
    assert stats["inf"]["max"] == 1.0 and stats["inf"]["posinf_count"] == 1
    run("inspect", "--stats", "odd.safetensors")


def test_inspect_lists_views_and_their_stats(here: Path) -> None:
    base = torch.arange(6.0).reshape(2, 3)
    paramio.save({"base": base, "row": base[1], "col": base.t()}, here / "views.safetensors")
    out = run("inspect", "views.safetensors").stdout
    assert "view of base (offset 3, stride [1])" in out and "view of base (offset 0, stride [1, 3])" in out
    stats = json.loads(run("inspect", "--json", "--stats", "views.safetensors").stdout)["stats"]
    assert stats["row"]["mean"] == 4.0 and stats["row"]["max"] == 5.0 and stats["col"]["mean"] == 2.5


def test_export_a_model_with_an_unstorable_overlap(here: Path, user_imports: None) -> None:
    (here / "overlap.py").write_text(
        "import torch\nfrom torch import nn\n\n"
        "def make():\n"
        "    x = torch.arange(10.0)\n"
        "    m = nn.Module()\n"
        "    m.a, m.b = nn.Parameter(x[:6]), nn.Parameter(x[4:])\n"
        "    return m\n"
    )
    result = run("export", "overlap.py:make", "-o", "o.safetensors", code=2)
    one_line_error(result, "overlap.py:make", "`a`, `b`", "overlap")
    assert not (here / "o.safetensors").exists()


def test_tensor_stats_of_a_view_base_and_complex() -> None:
    assert tensor_stats(torch.tensor([1 + 1j, 0j])).l2_norm == pytest.approx(2 ** 0.5)
    assert tensor_stats(torch.arange(4.0).reshape(2, 2).t()).mean == 1.5


# -- validate and signature -----------------------------------------------------------------------------------


def test_validate_ok_and_against_a_factory(mlp_file: Path) -> None:
    out = run("validate", mlp_file).stdout
    assert out.startswith(f"{mlp_file}: ok")
    run("validate", mlp_file, "--against", f"{EXAMPLES}:tied_mlp")
    run("validate", mlp_file, "--against", f"{EXAMPLES}:lazy_tied_mlp", "--example-input", "1x4")


def test_validate_against_the_wrong_model_lists_problems(mlp_file: Path) -> None:
    result = run("validate", mlp_file, "--against", f"{EXAMPLES}:tiny_lm", code=1)
    lines = result.stdout.strip().splitlines()
    assert "problems" in lines[0]
    assert any("embed.weight" in line and "missing" in line for line in lines[1:])


def test_validate_finds_a_corrupted_tensor(mlp_file: Path) -> None:
    data = bytearray(mlp_file.read_bytes())
    data[-1] ^= 0xFF  # the last byte of the last tensor
    mlp_file.write_bytes(bytes(data))
    result = run("validate", mlp_file, code=1)
    assert "checksum" in result.stdout


def test_validate_against_a_lazy_model_without_input_is_bad_usage(mlp_file: Path) -> None:
    one_line_error(run("validate", mlp_file, "--against", f"{EXAMPLES}:lazy_tied_mlp", code=2), "uninitialized")


def test_signature_from_factory_and_file_agree(mlp_file: Path, here: Path) -> None:
    from_model = run("signature", f"{EXAMPLES}:tied_mlp").stdout
    from_file = run("signature", mlp_file).stdout
    assert json.loads(from_model) == json.loads(from_file)
    sig = paramio.Signature.from_json(from_model)
    assert sig.ties[0].canonical == "2.weight"

    run("signature", f"{EXAMPLES}:tiny_lm", "-o", "lm.sig.json")
    run("validate", mlp_file, "--against", "lm.sig.json", code=1)
    run("signature", mlp_file, "-o", "mlp.sig.json")
    run("validate", mlp_file, "--against", "mlp.sig.json")


def test_validate_against_a_missing_signature(mlp_file: Path) -> None:
    one_line_error(run("validate", mlp_file, "--against", "nope.json", code=2), "nope.json")


# -- convert and diff -----------------------------------------------------------------------------------------


def test_convert_keeps_ties_and_casts(mlp_file: Path, here: Path) -> None:
    result = run("convert", mlp_file, "half.safetensors", "--dtype", "fp16")
    assert result.stdout == "" and "half.safetensors" in result.stderr
    ck = paramio.load(here / "half.safetensors")
    assert ck["2.weight"] is ck["4.weight"] and ck["2.weight"].dtype == torch.float16
    run("diff", mlp_file, "half.safetensors", code=1)


#: Every format paramio has, by its first suffix: the convert test covers each of them.
EVERY_FORMAT = {name: next(s for s, f in SUFFIXES.items() if f == name) for name in FORMATS}


def test_convert_covers_every_format() -> None:
    assert set(EVERY_FORMAT) == {"safetensors", "hdf5", "onnx", "torch"}


@pytest.mark.parametrize("suffix", EVERY_FORMAT.values(), ids=EVERY_FORMAT.keys())
def test_convert_to_every_format_and_back(mlp_file: Path, here: Path, suffix: str) -> None:
    run("convert", mlp_file, f"m{suffix}")
    ck = paramio.load(here / f"m{suffix}")
    assert ck["2.weight"] is ck["4.weight"]
    run("diff", mlp_file, f"m{suffix}")
    run("convert", f"m{suffix}", "back.safetensors")
    run("diff", mlp_file, "back.safetensors")


def test_diff_exit_codes_and_tolerance(here: Path) -> None:
    base = torch.linspace(-1, 1, 16)
    paramio.save({"w": base}, here / "a.safetensors")
    paramio.save({"w": base + 1e-4}, here / "b.safetensors")
    paramio.save({"w": base, "extra": torch.ones(2)}, here / "c.safetensors")
    assert "equal" in run("diff", "a.safetensors", "a.safetensors").stdout
    out = run("diff", "a.safetensors", "b.safetensors", code=1).stdout
    assert "values: w" in out
    run("diff", "a.safetensors", "b.safetensors", "--tolerance", "1e-3")
    assert "only in B: extra" in run("diff", "a.safetensors", "c.safetensors", code=1).stdout
    run("diff", "a.safetensors", "b.safetensors", "--tolerance", "-1", code=2)


def test_diff_reports_a_lost_tie(mlp_file: Path, here: Path) -> None:
    state = {k: v.clone() for k, v in tied_mlp().state_dict().items()}  # clones: the tie is gone
    paramio.save(state, here / "untied.safetensors")
    out = run("diff", mlp_file, "untied.safetensors", code=1).stdout
    assert "ties:" in out and "2.weight" in out


# -- schema ---------------------------------------------------------------------------------------------------


def test_schema_writes_then_checks(tmp_path: Path) -> None:
    result = run("schema", "--check", "--dir", tmp_path, code=1)
    assert "manifest.schema.json" in result.stdout and "signature.schema.json" in result.stdout
    run("schema", "--dir", tmp_path)
    for filename, text in json_schemas().items():
        assert (tmp_path / filename).read_text() == text
    run("schema", "--check", "--dir", tmp_path)

    stale = tmp_path / "signature.schema.json"
    stale.write_text(stale.read_text().replace('"title"', '"old_title"', 1))
    result = run("schema", "--check", "--dir", tmp_path, code=1)
    assert "signature.schema.json" in result.stdout and "manifest.schema.json" not in result.stdout
    assert "stale" in result.stdout


def test_checked_in_schemas_are_fresh() -> None:
    repo_schemas = Path(__file__).resolve().parent.parent / "schemas"
    if not repo_schemas.is_dir():
        pytest.skip("no schemas/ folder next to the package")
    run("schema", "--check")
