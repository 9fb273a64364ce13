"""The first hour at the CLI: a new user asks for help, mistypes, exports a graph for any batch size, reads
tables on a 130-column terminal, meets a corrupt file and a bug, and every time gets a fast answer in one
line that names the flag to use."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

import paramio
from paramio.cli import app
from paramio.display import manifest_table
from paramio.examples import tiny_lm

from .test_cli import EXAMPLES, one_line_error, run

COMMANDS = ("export", "convert", "inspect", "validate", "signature", "diff", "stats", "report", "schema")


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


# -- fast help: no torch -------------------------------------------------------------------------------------

NO_TORCH = textwrap.dedent("""
    import json, sys
    from paramio.cli import main
    codes = []
    for argv in json.loads(sys.argv[1]):
        sys.argv = ["paramio", *argv]
        try:
            main()
        except SystemExit as e:
            codes.append(e.code)
    print(json.dumps({"codes": codes, "torch": "torch" in sys.modules}))
""")


def test_help_version_and_usage_errors_do_not_import_torch(tmp_path: Path) -> None:
    """`paramio --help` answers without the seconds an import of torch takes."""
    answers = {("--help",): 0, ("--version",): 0, ("-h",): 0, (): 2, ("nosuch",): 2, ("convert", "a"): 2,
               ("export", "x:y", "-o", "a.safetensors", "--nope"): 2,
               ("export", "x:y", "-o", "a.safetensors", "--dtype", "int7"): 2,
               ("export", "x:y", "-o", "a.safetensors", "--example-input", "2xz"): 2,
               ("export", "x:y", "-o", "a.safetensors", "--format", "zip"): 2,
               **{(command, "--help"): 0 for command in COMMANDS}}
    proc = subprocess.run([sys.executable, "-c", NO_TORCH, json.dumps([list(a) for a in answers])], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["codes"] == list(answers.values())
    assert result["torch"] is False


def test_import_paramio_is_lazy_and_public_names_stay_functions(tmp_path: Path) -> None:
    """`import paramio` loads no torch; each public name loads on first use; importing a submodule named
    like its function (paramio.diff, paramio.convert) does not turn the function into a module."""
    code = textwrap.dedent("""
        import sys
        import paramio
        assert "torch" not in sys.modules
        import paramio.diff, paramio.convert, paramio.validation
        from paramio.diff import Diff
        assert callable(paramio.diff) and paramio.diff.__name__ == "diff", paramio.diff
        assert callable(paramio.convert) and paramio.convert.__name__ == "convert", paramio.convert
        assert paramio.Diff is Diff and "torch" in sys.modules
        assert set(paramio.__all__) <= set(dir(paramio))
        for name in paramio.__all__:
            getattr(paramio, name)
        try:
            paramio.no_such_name
        except AttributeError:
            pass
        else:
            raise AssertionError("no AttributeError")
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "ok", proc.stderr


# -- usage errors are one line ---------------------------------------------------------------------------------


@pytest.mark.parametrize("args, needle", [
    (["export", f"{EXAMPLES}:tied_mlp", "-o", "x.safetensors", "--nope"], "--nope"),
    (["export", f"{EXAMPLES}:tied_mlp"], "--out"),
    (["convert", "a.safetensors"], "OUT"),
    (["inspect"], "FILE"),
    (["export", f"{EXAMPLES}:tied_mlp", "-o", "x.safetensors", "--dtype", "int7"], "int7"),
    (["export", f"{EXAMPLES}:lazy_tied_mlp", "-o", "x.safetensors", "--example-input", "99999999999x99999999999"],
     "elements"),
    (["export", f"{EXAMPLES}:lazy_tied_mlp", "-o", "x.safetensors", "--example-input", "9" * 30], "elements"),
])
def test_usage_errors_are_one_line_exit_2(here: Path, args: list[str], needle: str) -> None:
    one_line_error(run(*args, code=2), needle, "--help")
    assert not (here / "x.safetensors").exists()


# -- hints in CLI terms ----------------------------------------------------------------------------------------


def test_a_misspelt_suffix_gets_did_you_mean_and_the_flag(here: Path) -> None:
    line = one_line_error(run("export", f"{EXAMPLES}:tied_mlp", "-o", "m.safetensor", code=2), "m.safetensor")
    assert "did you mean .safetensors" in line and "--format" in line and "format=" not in line
    (here / "w.xyz").write_bytes(b"1234")
    line = one_line_error(run("inspect", "w.xyz", code=2), "unknown suffix")
    assert "format" not in line.partition("use one of")[2], line  # inspect has no --format: no flag to name
    assert "rename" in line


def test_a_dot_instead_of_the_factory_colon_gets_the_colon(here: Path) -> None:
    line = one_line_error(run("export", "mymodels.minigpt", "-o", "m.safetensors", code=2), "mymodels.minigpt")
    assert "mymodels:minigpt" in line and "module:callable" in line
    line = one_line_error(run("signature", "mymodels.minigpt", code=2))
    assert "mymodels:minigpt" in line


def test_float_example_input_for_token_ids_suggests_int64_and_the_vocabulary(here: Path) -> None:
    line = one_line_error(run("export", f"{EXAMPLES}:tiny_lm", "--example-input", "1x8", "-o", "lm.onnx", code=2),
                          "forward pass")
    assert "--example-input 1x8:int64:32" in line  # TinyLM's embedding has 32 rows
    run("export", f"{EXAMPLES}:tiny_lm", "--example-input", "1x8:int64:32", "-o", "lm.safetensors")


TINY_GPT2 = """
from transformers import GPT2Config, GPT2LMHeadModel

def make(use_cache=True):
    config = GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=16, use_cache=use_cache,
                        bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config)
"""


def test_a_transformers_model_with_its_cache_on_gets_the_use_cache_hint(here: Path) -> None:
    (here / "tinygpt.py").write_text(TINY_GPT2)
    result = run("export", "tinygpt.py:make", "--example-input", "1x8:int64:50", "-o", "g.onnx", code=2)
    line = one_line_error(result, "tinygpt.py:make", "Cache")
    assert "use_cache = False" in line or "use_cache=False" in line
    assert not (here / "g.onnx").exists()


def test_a_corrupt_tensor_under_stats_suggests_no_verify(here: Path) -> None:
    paramio.save({"w": torch.arange(6.0)}, here / "m.safetensors")
    data = bytearray((here / "m.safetensors").read_bytes())
    data[-1] ^= 0x40  # the last byte of the only tensor
    (here / "m.safetensors").write_bytes(bytes(data))
    line = one_line_error(run("inspect", "--stats", "m.safetensors", code=2), "m.safetensors", "checksum")
    assert "--no-verify" in line and "verify=False" not in line
    stats = json.loads(run("inspect", "--stats", "--no-verify", "--json", "m.safetensors").stdout)["stats"]
    assert stats["w"]["min"] == 0.0 and stats["w"]["max"] != 5.0  # read anyway: the damaged value shows
    line = one_line_error(run("convert", "m.safetensors", "c.h5", code=2), "checksum")
    assert "verify=False" not in line and "paramio validate" in line  # convert has no --no-verify


# -- ONNX graphs for any batch size ----------------------------------------------------------------------------


def _ort_logits(path: Path, tokens: torch.Tensor) -> torch.Tensor:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: tokens.numpy()})
    return torch.from_numpy(np.asarray(out))


def test_dynamic_batch_exports_a_graph_that_runs_another_batch_size(here: Path) -> None:
    run("export", f"{EXAMPLES}:tiny_lm", "--example-input", "2x8:int64:32", "--dynamic-batch", "-o", "lm.onnx")
    tokens = torch.randint(0, 32, (5, 8), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = tiny_lm().eval()(tokens)
    torch.testing.assert_close(_ort_logits(here / "lm.onnx", tokens), expected, atol=1e-5, rtol=1e-5)
    ck = paramio.load(here / "lm.onnx")
    assert ck["embed.weight"] is ck["head.weight"]


def test_dynamic_axis_by_name_frees_the_sequence_length(here: Path) -> None:
    run("export", f"{EXAMPLES}:tiny_lm", "--example-input", "1x8:int64:32", "--dynamic-batch",
        "--dynamic-axis", "tokens:1", "-o", "lm.onnx")
    tokens = torch.randint(0, 32, (3, 5), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = tiny_lm().eval()(tokens)
    torch.testing.assert_close(_ort_logits(here / "lm.onnx", tokens), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("args, needle", [
    (["--dynamic-batch", "-o", "lm.safetensors"], "ONNX"),  # no graph to shape
    (["--dynamic-axis", "tokens", "-o", "lm.onnx"], "NAME:DIM"),
    (["--dynamic-axis", "ids:1", "-o", "lm.onnx"], "tokens"),  # names the inputs the model has
    (["--dynamic-axis", "tokens:2", "-o", "lm.onnx"], "2 dimensions"),
])
def test_dynamic_axes_misused_are_usage_errors(here: Path, args: list[str], needle: str) -> None:
    one_line_error(run("export", f"{EXAMPLES}:tiny_lm", "--example-input", "1x8:int64:32", *args, code=2), needle)


# -- help pages ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
def test_every_help_page_shows_flags_as_flags_and_an_example(command: str) -> None:
    page = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "160"}).stdout
    assert "<bool>" not in page
    assert "Examples:" in page and f"$ paramio {command}" in page


def test_convert_help_names_its_arguments() -> None:
    page = CliRunner().invoke(app, ["convert", "--help"], env={"COLUMNS": "160"}).stdout
    assert "IN" in page and "OUT" in page and "SRC" not in page and "DST" not in page


def test_a_boolean_flag_takes_no_value(here: Path) -> None:
    """The help shows `--json` alone, and that is how it is used; a value after it is an extra argument."""
    paramio.save({"w": torch.ones(2)}, here / "m.safetensors")
    json.loads(run("inspect", "--json", "m.safetensors").stdout)
    one_line_error(run("inspect", "--json", "true", "m.safetensors", code=2), "unexpected extra argument")


# -- tables ----------------------------------------------------------------------------------------------------

GPT2_NAMES = [f"transformer.h.{i}.{part}" for i in range(12) for part in
              ("ln_1.weight", "attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight")]


def test_at_130_columns_names_never_wrap_and_checksums_give_way(here: Path) -> None:
    tensors = {name: torch.full((2, 3), float(i)) for i, name in enumerate(GPT2_NAMES)}
    tensors["lm_head.weight"] = tensors["transformer.wte.weight"] = torch.zeros(4, 2)
    paramio.save(tensors, here / "gpt.safetensors", checksum="sha256")
    out = CliRunner().invoke(app, ["inspect", "gpt.safetensors"], env={"COLUMNS": "130"}).stdout
    lines = out.splitlines()
    assert max(map(len, lines)) <= 130
    rows = [line for line in lines if line.startswith("│")]
    for name in [*GPT2_NAMES, "lm_head.weight", "transformer.wte.weight"]:
        assert any(f"│ {name} " in row for row in rows), name  # whole, on one line
    assert "…" in out  # the checksums were shortened, not the names
    wide = Console(file=io.StringIO(), width=400)
    wide.print(manifest_table(paramio.read_manifest(here / "gpt.safetensors")))
    checksum = paramio.read_manifest(here / "gpt.safetensors").tensors[0].checksum
    assert checksum in wide.file.getvalue()  # given the room, a checksum is shown whole


# -- hostile inspect -------------------------------------------------------------------------------------------


def test_inspect_a_16m_character_metadata_value_prints_a_short_line(here: Path) -> None:
    value = "x" * 16_000_000
    paramio.save({"w": torch.ones(2)}, here / "m.safetensors", metadata={"note": value, "two\nlines": "a\x1bb"})
    out = run("inspect", "m.safetensors").stdout
    assert len(out) < 5_000
    assert "note=" + "x" * 200 + "… (16,000,000 characters)" in out
    assert "two\\nlines=a\\x1bb" in out  # control characters shown, not sent to the terminal
    assert json.loads(run("inspect", "--json", "m.safetensors").stdout)["manifest"]["metadata"]["note"] == value


PEAK_RSS = textwrap.dedent("""
    import json, os, sys, threading
    from typer.testing import CliRunner
    from paramio.cli import app

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024

    def growth(path):
        before, peak, done = rss(), [0], threading.Event()

        def watch():
            while not done.is_set():
                peak[0] = max(peak[0], rss())
                done.wait(0.002)

        watcher = threading.Thread(target=watch)
        watcher.start()
        result = runner.invoke(app, ["inspect", "--stats", "--json", path])
        done.set()
        watcher.join()
        assert result.exit_code == 0, result.output
        return peak[0] - before, json.loads(result.stdout)["stats"]["big"]

    runner = CliRunner()
    growth(sys.argv[1])  # warm: imports, first allocations
    print(json.dumps([growth(path) for path in sys.argv[1:]]))
""")


def _big(path: Path, n: int) -> tuple[float, float]:
    big = torch.arange(n, dtype=torch.float32).remainder_(1000.0).half()  # integers: exact in float16
    paramio.save({"big": big}, path)
    expected = big.double()
    return float(expected.mean()), float(expected.std(correction=0))


def test_inspect_stats_of_a_large_tensor_stays_bounded_in_memory(here: Path) -> None:
    """No whole-tensor float64 copy: for float16 that copy alone is four times the file. Beyond a fixed
    working set (its chunks), the peak may grow only by the file's own pages: measured on two sizes, the
    difference in growth stays under twice the difference in size (a float64 copy would make it 4x+)."""
    small_n, large_n = 16 << 20, 48 << 20  # 32 MiB and 96 MiB of float16
    _big(here / "small.safetensors", small_n)
    mean, std = _big(here / "large.safetensors", large_n)
    proc = subprocess.run([sys.executable, "-c", PEAK_RSS, "small.safetensors", "large.safetensors"], cwd=here,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    (grew_small, _), (grew_large, figures) = json.loads(proc.stdout.strip().splitlines()[-1])
    delta_kib = (large_n - small_n) * 2 // 1024
    assert grew_large - grew_small < 2 * delta_kib, (grew_small, grew_large, delta_kib)
    assert figures["mean"] == pytest.approx(mean, rel=1e-12)
    assert figures["std"] == pytest.approx(std, rel=1e-9)
    assert figures["max"] == 999.0


# -- bugs are bugs ---------------------------------------------------------------------------------------------


@pytest.fixture
def broken_invariant(monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint that hands the writer its tensors out of manifest order: an invariant of paramio's own
    code, which no input can break."""
    from paramio.checkpoint import Checkpoint

    stored = Checkpoint.stored
    monkeypatch.setattr(Checkpoint, "stored", lambda self: reversed(list(stored(self))))


def test_an_internal_invariant_failure_exits_3(here: Path, broken_invariant: None) -> None:
    line = one_line_error(run("export", f"{EXAMPLES}:tied_mlp", "-o", "m.safetensors", code=3), "internal error",
                          "--debug")
    assert "a bug" in line
    assert not (here / "m.safetensors").exists()


def test_debug_shows_the_bug_without_asking_for_debug(here: Path, broken_invariant: None) -> None:
    result = run("--debug", "export", f"{EXAMPLES}:tied_mlp", "-o", "m.safetensors", code=3)
    assert "Traceback" in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: internal error") and "--debug" not in last


def test_a_missing_optional_dependency_stays_exit_2(here: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if not installed
    line = one_line_error(run("export", f"{EXAMPLES}:tiny_lm", "--example-input", "1x8:int64:32", "-o", "lm.onnx",
                              code=2), "onnxscript")
    assert "pip install" in line


def test_a_module_not_found_outside_paramio_is_exit_2_with_the_install_command(
        here: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Wherever an optional package is imported, its absence is the environment's, not a bug."""
    paramio.save({"w": torch.ones(2)}, here / "m.safetensors")

    def needs_matplotlib(*args, **kwargs):
        import matplotlib_not_installed_here  # noqa: F401

    monkeypatch.setattr(paramio, "read_manifest", needs_matplotlib)
    one_line_error(run("inspect", "m.safetensors", code=2), "matplotlib_not_installed_here is not installed",
                   "pip install")


# -- after make demo -------------------------------------------------------------------------------------------


def test_the_readme_says_how_to_run_paramio_after_make_demo() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    quick_start = readme.partition("## Quick start")[2].partition("\n## ")[0]
    assert ".venv/bin/paramio" in quick_start and "source .venv/bin/activate" in quick_start
