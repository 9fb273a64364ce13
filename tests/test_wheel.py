"""A plain install is whole (issue 14): the wheel built from this checkout, installed into a fresh virtual
environment that sees only the distributions paramio declares (and theirs), runs `paramio schema --check`,
an export to every format including an ONNX graph, and `python -m paramio.demo`, from outside the checkout.

Fast and offline: the environment reuses this one's installed distributions (the pinned torch among them)
through a folder of links to exactly the declared dependency closure, so an import of anything undeclared
(safetensors, onnxruntime, transformers, the test tools) fails there as it would for a user.
"""

from __future__ import annotations

import email
import importlib.metadata as metadata
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def build_wheel(dest: Path) -> Path:
    """The wheel of a copy of the checkout's package files (the build leaves build/ and egg-info behind)."""
    src = dest / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for folder in ("paramio", "schemas"):
        shutil.copytree(ROOT / folder, src / folder, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    # This environment's setuptools if it is recent enough for pyproject's build-system; else pip builds in an
    # isolated environment, fetching setuptools (CI has the package index).
    isolation = ["--no-build-isolation"] if _setuptools_at_least("77") else []
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation,
                    "-w", str(dest / "dist"), str(src)], check=True, timeout=300)
    return next((dest / "dist").glob("paramio-*.whl"))


def _setuptools_at_least(version: str) -> bool:
    try:
        return Version(metadata.version("setuptools")) >= Version(version)
    except metadata.PackageNotFoundError:
        return False


def requirements(wheel: Path) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        message = email.message_from_bytes(archive.read(name))
    return [Requirement(r) for r in message.get_all("Requires-Dist") or []]


def closure(roots: list[Requirement]) -> dict[str, metadata.Distribution]:
    """Every installed distribution the requirements need (markers evaluated without extras but those asked)."""
    found: dict[str, metadata.Distribution] = {}
    todo = list(roots)
    while todo:
        req = todo.pop()
        if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in ("", *req.extras)):
            continue
        key = req.name.lower().replace("_", "-")
        if key in found:
            continue
        dist = metadata.distribution(req.name)  # PackageNotFoundError: a declared dependency is not installed
        found[key] = dist
        for text in dist.requires or []:
            sub = Requirement(text)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in ("", *req.extras)):
                todo.append(Requirement(str(sub).split(";")[0]))  # its marker held: keep name and extras
    return found


def link_site(dists: dict[str, metadata.Distribution], folder: Path) -> None:
    """Links to each distribution's top-level files (packages, modules, dist-info, bundled libraries)."""
    folder.mkdir()
    site = {Path(p) for p in (sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"])}
    for dist in dists.values():
        base = Path(dist.locate_file(""))
        if base not in site:
            continue
        tops = {Path(f).parts[0] for f in dist.files or () if not str(f).startswith("..")}
        for top in tops - {"__pycache__"}:
            target = base / top
            if target.exists() and not (folder / top).exists():
                (folder / top).symlink_to(target)


def fresh_venv(tmp_path: Path, wheel: Path) -> Path:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    deps = tmp_path / "deps"
    link_site(closure(requirements(wheel)), deps)
    python = venv / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    Path(purelib, "paramio_test_deps.pth").write_text(f"{deps}\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-index",
                    "--no-deps", str(wheel)], check=True, timeout=300)
    return venv


def test_the_wheel_installed_in_a_fresh_venv_checks_its_schemas_exports_every_format_and_runs_the_demo(tmp_path):
    wheel = build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    assert {"paramio/_schemas/manifest.schema.json", "paramio/_schemas/signature.schema.json"} <= set(names)
    meta = email.message_from_bytes(zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))))
    assert meta["License-Expression"] == "Apache-2.0"
    assert "safetensors" not in {Requirement(r).name for r in meta.get_all("Requires-Dist")
                                 if "extra ==" not in r}
    venv = fresh_venv(tmp_path, wheel)
    work = tmp_path / "work"  # outside the checkout: nothing of it is importable from here
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"

    def run(*args: str) -> subprocess.CompletedProcess:
        done = subprocess.run(list(args), cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        return done

    where = run("python", "-c", "import paramio, importlib.util as u; print(paramio.__file__); "
                "print(u.find_spec('safetensors'), u.find_spec('onnxruntime'))").stdout.split()
    assert where[0].startswith(str(venv)) and where[1:] == ["None", "None"]
    run("paramio", "schema", "--check")
    for suffix in ("safetensors", "h5", "pt"):
        run("paramio", "export", "paramio.examples:tiny_lm", "-o", f"lm.{suffix}")
    run("paramio", "export", "paramio.examples:tiny_lm", "-o", "lm.onnx", "--example-input", "1x8:int64:32")
    check = ("import paramio, onnx; ck = paramio.load('lm.onnx'); assert ck['head.weight'] is ck['embed.weight']; "
             "assert len(onnx.load('lm.onnx').graph.node) > 10, 'a graph, not a weights container'; "
             "[paramio.load(f'lm.{s}') for s in ('safetensors', 'h5', 'pt')]")
    run("python", "-c", check)
    run("python", "-m", "paramio.demo", "--out", "demo")  # without onnxruntime, which it does not need
    assert {p.suffix for p in (work / "demo").iterdir()} >= {".safetensors", ".h5", ".onnx", ".pt"}
