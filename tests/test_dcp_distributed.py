"""Two real ranks (``torch.multiprocessing`` spawn, gloo on 127.0.0.1): a TinyLM with a tied head, sharded
with FSDP2 ``fully_shard`` on the CPU, trained one step and checkpointed by stock ``dcp.save`` three ways:
paramio's planner and storage writer, paramio's planner behind DCP's own writer, and stock DCP alone. Then,
in this one process, paramio reads each and the model comes back whole, tied, and equal to the distributed
one. The ranks run once for the module (about 15 s)."""

from __future__ import annotations

import os
import pickle
import socket
import time
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

import paramio
from paramio.errors import FormatError
from paramio.examples import TinyLM, tiny_lm

from .conftest import untied_lm

WORLD = 2
TOKENS = torch.arange(8).view(1, 8) % 32
TIMEOUT_S = 300  # a bound, not a speed target: a loaded 2-core machine takes ~15-60 s


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, port: int, out: str) -> None:
    """One rank: shard, train a step, save three ways; rank 0 also keeps the full output."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    import paramio.dcp

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        model = tiny_lm()
        fully_shard(model, mesh=init_device_mesh("cpu", (WORLD,)))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        model(TOKENS).square().mean().backward()
        optimizer.step()
        with torch.no_grad():
            expected = model(TOKENS)
        state = model.state_dict()
        folder = Path(out)
        dcp.save(state, storage_writer=paramio.dcp.StorageWriter(folder / "paramio"),
                 planner=paramio.dcp.SavePlanner(model))
        dcp.save(state, checkpoint_id=str(folder / "planner"), planner=paramio.dcp.SavePlanner(model))
        dcp.save(state, checkpoint_id=str(folder / "stock"))
        # paramio's writer behind the stock planner, with a replicated (plain) tensor under two names: DCP's
        # dedup may give each name to another rank; the alias still points at the one stored copy
        shared = torch.arange(6.0)
        dcp.save({**state, "extra.a": shared, "extra.b": shared},
                 storage_writer=paramio.dcp.StorageWriter(folder / "writer"))
        if rank == 0:
            torch.save(expected, folder / "expected.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dcp-2-ranks")
    context = mp.start_processes(_rank, args=(_free_port(), str(out)), nprocs=WORLD, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + TIMEOUT_S
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the {WORLD} ranks did not finish within {TIMEOUT_S} s")
    return out


def _stored_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.distcp"))


def test_sharded_save_converts_and_loads_into_an_untied_model(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.safetensors"
    paramio.convert(run / "paramio", out)
    model = untied_lm()
    report = paramio.load_into(model, out)
    assert ("head.weight", "embed.weight") in report.retied
    assert model.head.weight is model.embed.weight
    expected = torch.load(run / "expected.pt")
    assert torch.equal(model(TOKENS), expected)

    # the tied weight's gradient is the sum of its two uses
    model(TOKENS).square().mean().backward()
    twin = untied_lm()
    twin.load_state_dict({k: v.detach().clone() for k, v in model.state_dict().items()})
    twin(TOKENS).square().mean().backward()
    assert torch.allclose(model.embed.weight.grad, twin.embed.weight.grad + twin.head.weight.grad)


def test_paramio_writer_stores_the_tie_once_with_checksums(run: Path) -> None:
    manifest = paramio.read_manifest(run / "paramio")
    assert [(g.canonical, g.aliases) for g in manifest.ties] == [("embed.weight", ("head.weight",))]
    assert manifest.producer.name == "paramio" and manifest.model_class == "paramio.examples.TinyLM"
    assert {t.name: t.kind for t in manifest.tensors}["causal_mask"] == "buffer"
    saved = _stored_bytes(run / "stock") - _stored_bytes(run / "paramio")
    embed = tiny_lm().embed.weight
    assert saved >= embed.nbytes  # stock DCP stored the head's copy of the embedding too
    ck = paramio.load(run / "paramio")
    assert ck["head.weight"] is ck["embed.weight"]
    assert paramio.validate(run / "paramio").ok


def test_a_flipped_bit_in_a_chunk_is_caught(run: Path, tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "ckpt"
    shutil.copytree(run / "paramio", folder)
    with open(folder / ".metadata", "rb") as fh:
        md = pickle.load(fh)
    info = next(v for k, v in md.storage_data.items() if k.fqn == "mlp.0.weight" and k.offset[0] > 0)
    data = bytearray((folder / info.relative_path).read_bytes())
    chunk = paramio.load(folder)["mlp.0.weight"][16:].contiguous().view(torch.uint8).numpy().tobytes()
    at = data.find(chunk, info.offset, info.offset + info.length)
    assert at > 0
    data[at + 5] ^= 1  # one bit of the chunk's values
    (folder / info.relative_path).write_bytes(bytes(data))
    with pytest.raises(FormatError, match=r"chunk of `mlp\.0\.weight` at \[16, 0\]: checksum mismatch"):
        paramio.load(folder)
    assert paramio.load(folder, verify=False)["mlp.0.weight"].shape == (32, 16)


def test_stock_dcp_reads_what_paramio_wrote_resharded_to_one_process(run: Path, tmp_path: Path) -> None:
    expected = paramio.load(run / "stock")
    state = {k: torch.zeros_like(v) for k, v in tiny_lm(seed=9).state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(state, checkpoint_id=str(run / "paramio"))  # 2 ranks' chunks into one process's tensors
    for name, tensor in state.items():
        assert torch.equal(tensor, expected[name]), name
    dcp_to_torch_save(run / "paramio", tmp_path / "full.pt")
    full = torch.load(tmp_path / "full.pt")
    assert torch.equal(full["head.weight"], expected["embed.weight"])


def test_planner_alone_behind_stock_writer_records_the_tie(run: Path) -> None:
    ck = paramio.load(run / "planner")
    assert ck["head.weight"] is ck["embed.weight"]
    assert paramio.validate(run / "planner").ok
    assert paramio.diff(run / "planner", run / "paramio").equal


def test_stock_sharded_checkpoint_comes_back_equal(run: Path, tmp_path: Path) -> None:
    assert paramio.read_manifest(run / "stock").ties == ()  # nothing invented
    model: TinyLM = tiny_lm(seed=5)
    report = paramio.load_into(model, run / "stock")
    assert ("head.weight", "embed.weight") in report.retied and model.head.weight is model.embed.weight
    assert torch.equal(model(TOKENS), torch.load(run / "expected.pt"))
    out = tmp_path / "stock.safetensors"
    paramio.convert(run / "stock", out)
    ours, stock = paramio.load(run / "paramio"), paramio.load(out)
    assert set(ours) == set(stock) and all(torch.equal(ours[k], stock[k]) for k in ours)


def test_writer_behind_the_stock_planner_stores_replicated_ties_once(run: Path, tmp_path: Path) -> None:
    manifest = paramio.read_manifest(run / "writer")
    assert {(g.canonical, g.aliases) for g in manifest.ties} == {("embed.weight", ("head.weight",)),
                                                                  ("extra.a", ("extra.b",))}
    ck = paramio.load(run / "writer")
    assert ck["extra.b"] is ck["extra.a"] and torch.equal(ck["extra.a"], torch.arange(6.0))
    with open(run / "writer" / ".metadata", "rb") as fh:
        md = pickle.load(fh)  # noqa: S301 - the test's own file
    places = {k.fqn: v for k, v in md.storage_data.items() if k.fqn.startswith("extra.")}
    assert places["extra.a"] == places["extra.b"]  # one record, two names
    state = {"extra.a": torch.zeros(6), "extra.b": torch.zeros(6)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(state, checkpoint_id=str(run / "writer"))
    assert torch.equal(state["extra.b"], torch.arange(6.0)) and state["extra.a"] is not state["extra.b"]
