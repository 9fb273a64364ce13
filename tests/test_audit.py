"""The tie audit, as a user meets it: a GPT-2 head saved as a copy of the embedding, a transformers file
that drops the tied head, a checkpoint that stores a tie twice (as DCP does), a tie broken by training.
paramio says what the bytes suggest and what the model declares; it never ties tensors by itself."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import safetensors.torch as st
import torch
from safetensors import safe_open

import paramio
from paramio.errors import ValidationError
from paramio.examples import tiny_lm
from paramio.locations.base import Source

WTE, HEAD = "transformer.wte.weight", "lm_head.weight"


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def gpt2(seed: int = 0, layers: int = 2) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=layers, n_embd=16, n_head=2, vocab_size=50, n_positions=16, bos_token_id=0,
                        eos_token_id=0)
    torch.manual_seed(seed)
    return GPT2LMHeadModel(config).eval()


def test_a_gpt2_head_saved_as_a_copy_is_a_suspected_lost_tie(tmp_path: Path) -> None:
    model = gpt2()
    state = model.state_dict()
    state[HEAD] = state[HEAD].clone()  # save_file refuses shared memory, so the user clones the head
    path = tmp_path / "gpt2.safetensors"
    st.save_file(state, path)

    found = paramio.audit(path)
    # in file order (save_file sorts the names); fresh LayerNorm ones and zero biases are not suspects
    assert found.suspected_ties == ((HEAD, WTE),)
    report = paramio.validate(path)
    assert report.ok and report.audit == found
    assert [n for n in report.notes if "suspected" in n and HEAD in n and WTE in n]

    ck = paramio.load(path)  # the audit reports; nothing is tied from equal values
    assert ck[HEAD] is not ck[WTE] and not ck.ties

    against = paramio.audit(path, against=model)  # the model declares the tie: the copies are restorable
    assert against.restorable == ((WTE, HEAD),) and not against.suspected_ties and not against.problems
    report = paramio.validate(path, against=model)
    assert report.ok, report.problems
    assert [n for n in report.notes if "equal copies" in n]
    fresh = gpt2(seed=1)
    loaded = paramio.load_into(fresh, path)
    assert fresh.lm_head.weight is fresh.transformer.wte.weight
    assert (HEAD, WTE) in loaded.retied
    assert torch.equal(fresh.lm_head.weight, model.lm_head.weight)


def test_a_transformers_file_without_the_tied_head_validates_against_the_model(tmp_path: Path) -> None:
    model = gpt2()
    model.save_pretrained(tmp_path / "gpt2")
    path = tmp_path / "gpt2" / "model.safetensors"
    with safe_open(path, "pt") as f:
        assert HEAD not in f.keys() and WTE in f.keys()  # transformers drops the alias, records nothing

    found = paramio.audit(path, against=model)
    assert found.dropped == (HEAD,) and found.dropped_from == {HEAD: WTE}
    report = paramio.validate(path, against=model)
    assert report.ok, report.problems  # as strict load_into accepts it: the alias is filled from its canonical
    assert [n for n in report.notes if HEAD in n and "dropped" in n]
    assert paramio.audit(path).clean  # without the model, nothing to say
    folder = paramio.validate(tmp_path / "gpt2", against=model)  # the folder, as from_pretrained reads it
    assert folder.ok and folder.notes == report.notes, folder.problems

    fresh = gpt2(seed=1)
    loaded = paramio.load_into(fresh, path)
    assert HEAD in loaded.filled and fresh.lm_head.weight is fresh.transformer.wte.weight
    assert torch.equal(fresh.lm_head.weight, model.transformer.wte.weight)


def test_a_checkpoint_that_stores_a_tie_twice_is_restorable(tmp_path: Path) -> None:
    # DCP and other tools write each name's bytes: a tie comes back as two equal copies
    model = tiny_lm()
    path = tmp_path / "twice.pt"
    torch.save({k: v.clone() for k, v in model.state_dict().items()}, path)
    assert paramio.audit(path).suspected_ties == (("embed.weight", "head.weight"),)
    found = paramio.audit(path, against=model)
    assert found.restorable == (("embed.weight", "head.weight"),)
    assert paramio.validate(path, against=model).ok
    twin = tiny_lm(seed=3)
    paramio.load_into(twin, path)
    assert twin.head.weight is twin.embed.weight


def test_a_stock_dcp_checkpoint_stores_the_tie_twice_and_it_is_restorable(tmp_path: Path) -> None:
    import torch.distributed.checkpoint as dcp

    model = tiny_lm()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one process, no process group: DCP says so and saves
        dcp.save(model.state_dict(), checkpoint_id=tmp_path / "ckpt")
    assert paramio.audit(tmp_path / "ckpt").suspected_ties == (("embed.weight", "head.weight"),)
    found = paramio.audit(tmp_path / "ckpt", against=model)
    assert found.restorable == (("embed.weight", "head.weight"),)
    report = paramio.validate(tmp_path / "ckpt", against=model)
    assert report.ok and report.notes == found.notes
    twin = tiny_lm(seed=3)
    paramio.load_into(twin, tmp_path / "ckpt")
    assert twin.head.weight is twin.embed.weight


def test_a_tie_broken_by_training_is_a_problem_for_validate_and_load_into_alike(tmp_path: Path) -> None:
    model = tiny_lm()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["head.weight"] += 0.01  # the head was trained on its own after the tie was lost
    path = tmp_path / "broken.safetensors"
    st.save_file(state, path)

    found = paramio.audit(path, against=model)
    assert found.mismatched == (("embed.weight", "head.weight"),) and not found.restorable
    assert not paramio.audit(path).suspected_ties  # different bytes: nothing suspected
    report = paramio.validate(path, against=model)
    assert not report.ok
    assert len(report.problems) == 1 and "different values" in report.problems[0]
    assert "`embed.weight`, `head.weight`" in report.problems[0]
    with pytest.raises(ValidationError, match="different values"):
        paramio.load_into(tiny_lm(seed=2), path)


def test_a_paramio_file_of_a_fresh_model_has_nothing_to_report(tmp_path: Path) -> None:
    # many tensors with equal bytes by initialization (LayerNorm ones, zero biases), one recorded tie
    model = gpt2(layers=4)
    path = tmp_path / "gpt2.safetensors"
    paramio.save(model, path)
    assert paramio.audit(path).clean and paramio.audit(path, against=model).clean
    report = paramio.validate(path, against=model)
    assert report.ok and not report.notes


def test_candidates_come_from_the_checksums(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_lm()
    state = dict(model.state_dict())
    state["head.weight"] = state["head.weight"].clone()
    path = tmp_path / "copied.safetensors"
    paramio.save(state, path)  # a paramio file: every tensor has a checksum
    reads: list[str] = []
    real = Source.read_entry

    def counting(self: Source, entry: paramio.TensorEntry, *, verify: bool) -> torch.Tensor:
        reads.append(entry.name)
        return real(self, entry, verify=verify)

    monkeypatch.setattr(Source, "read_entry", counting)
    assert paramio.audit(path).suspected_ties == (("embed.weight", "head.weight"),)
    assert sorted(reads) == ["embed.weight", "head.weight"]  # only the two with equal checksums are read


def test_the_audit_of_models_and_mappings() -> None:
    model = tiny_lm()
    assert paramio.audit(model).clean  # the tie is real: nothing suspected
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert paramio.audit(state).suspected_ties == (("embed.weight", "head.weight"),)
    assert paramio.audit(state, against=model).restorable == (("embed.weight", "head.weight"),)
