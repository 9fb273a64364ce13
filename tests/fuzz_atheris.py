"""Coverage-guided fuzzing of one reader with atheris (libFuzzer), for ``make fuzz``.

    python -m tests.fuzz_atheris FORMAT [libFuzzer flags, e.g. -max_total_time=300 -timeout=20]

paramio's own code is instrumented for coverage. Inputs start from valid files of the format (the seeds of
tests/fuzzing.py); half the mutations are libFuzzer's byte mutations, half the structural mutations of
tests/fuzzing.py (header fields, manifests, links, pickles). Each input is read by ``read_manifest``,
``load`` and ``validate`` under a memory cap (RLIMIT_AS): a paramio error is fine; any other exception, an
allocation failure, a hang past ``-timeout`` or a crash stops the run, and libFuzzer writes the input as
``crash-*``/``timeout-*`` in the current folder (read it back with ``python -m tests.fuzz_atheris FORMAT
crash-...``).
"""

from __future__ import annotations

import random
import shutil
import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["paramio"]):
    import paramio
    import paramio.formats.hdf5  # noqa: F401
    import paramio.formats.onnx  # noqa: F401
    import paramio.formats.safetensors  # noqa: F401
    import paramio.formats.torch  # noqa: F401
    from paramio.errors import ParamioError

from .fuzzing import MODEL_DIR, STRUCTURAL, SUFFIX, Skip, _is_memory, cap_memory, write_seeds


class Finding(Exception):
    """A paramio error that hides an allocation failure (it would have allocated without bound)."""


def main() -> None:
    fmt = sys.argv[1]
    work = Path(tempfile.mkdtemp(prefix=f"paramio-atheris-{fmt}-"))
    corpus = work / "corpus"
    corpus.mkdir()
    for seed in write_seeds(work / "seeds", [fmt])[fmt]:
        for file in (seed / MODEL_DIR).iterdir():
            if file.suffix == SUFFIX[fmt]:
                shutil.copy(file, corpus / f"{seed.name}-{file.name}")
    path = work / "case" / MODEL_DIR / f"input{SUFFIX[fmt]}"
    path.parent.mkdir(parents=True)

    def test_one_input(data: bytes) -> None:
        path.write_bytes(data)
        for read in (paramio.read_manifest, paramio.load, paramio.validate):
            try:
                read(path)
            except ParamioError as e:
                if _is_memory(e):
                    raise Finding(f"{type(e).__name__}: {e}") from e

    def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
        rng = random.Random(seed)
        if rng.random() < 0.5:
            return atheris.Mutate(data, max_size)
        case = work / "mutate"
        shutil.rmtree(case, ignore_errors=True)
        (case / MODEL_DIR).mkdir(parents=True)
        target = case / MODEL_DIR / f"input{SUFFIX[fmt]}"
        target.write_bytes(data)
        try:
            STRUCTURAL[fmt](target, case, rng)
        except Skip:
            return atheris.Mutate(data, max_size)
        except Exception:  # noqa: BLE001 - the input is not structured enough for this edit
            return atheris.Mutate(data, max_size)
        return target.read_bytes()[:max_size]

    args = [sys.argv[0], *sys.argv[2:]]
    if not any(not a.startswith("-") for a in sys.argv[2:]):
        args.append(str(corpus))
    cap_memory(1024)
    atheris.Setup(args, test_one_input, custom_mutator=custom_mutator)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
