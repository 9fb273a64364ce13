"""The manifest models, their JSON Schemas, and the example documents under fixtures/manifests."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pydantic
import pytest

from paramio.manifest import Manifest, Signature, json_schemas

ROOT = Path(__file__).resolve().parent.parent
VALID = sorted((ROOT / "fixtures" / "manifests" / "valid").glob("*.json"))
INVALID = sorted((ROOT / "fixtures" / "manifests" / "invalid").glob("*.json"))
# Defects that need more than one field to see: JSON Schema cannot express them, pydantic's validators can.
CROSS_FIELD = {"duplicate_name", "alias_also_stored", "canonical_not_stored", "alias_in_two_groups",
               "gradient_without_prefix"}


def _schema(name: str) -> dict:
    return json.loads((ROOT / "schemas" / name).read_text())


def test_checked_in_schemas_are_current() -> None:
    for filename, text in json_schemas().items():
        assert (ROOT / "schemas" / filename).read_text() == text, (
            f"schemas/{filename} is stale: run `paramio schema` (or `make schema`)"
        )


def test_there_are_examples_of_both_kinds() -> None:
    assert len(VALID) >= 3 and len(INVALID) >= 10


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_valid_manifest_passes_pydantic_and_json_schema(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    manifest = Manifest.from_json(text)
    jsonschema.validate(json.loads(text), _schema("manifest.schema.json"))
    assert Manifest.from_json(manifest.to_json()) == manifest
    jsonschema.validate(json.loads(manifest.signature().to_json()), _schema("signature.schema.json"))


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_manifest_is_rejected(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    with pytest.raises(pydantic.ValidationError):
        Manifest.from_json(text)
    validator = jsonschema.Draft202012Validator(_schema("manifest.schema.json"))
    structural_errors = list(validator.iter_errors(json.loads(text)))
    if path.stem in CROSS_FIELD:
        assert structural_errors == [], "a cross-field defect: only pydantic's validators can see it"
    else:
        assert structural_errors, f"{path.stem}: JSON Schema should reject this document"


def test_manifest_is_frozen_and_strict() -> None:
    manifest = Manifest.from_json(VALID[0].read_text())
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        manifest.producer = None  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        Manifest.model_validate_json('{"producer": {"name": "x"}, "tensors": [{"name": "a", "dtype": "float32", '
                                     '"shape": ["3"]}]}')


def test_metadata_serializes_in_a_fixed_order() -> None:
    a = Manifest(producer={"name": "x"}, metadata={"b": "1", "a": "2"})  # type: ignore[arg-type]
    b = Manifest(producer={"name": "x"}, metadata={"a": "2", "b": "1"})  # type: ignore[arg-type]
    assert a.to_json() == b.to_json()


def test_signature_round_trips_and_checks_ties() -> None:
    manifest = Manifest.from_json((ROOT / "fixtures/manifests/valid/tied_mlp.json").read_text())
    sig = manifest.signature()
    assert Signature.from_json(sig.to_json()) == sig
    doc = json.loads(sig.to_json())
    doc["ties"][0]["canonical"] = "nowhere"
    with pytest.raises(pydantic.ValidationError, match="canonical"):
        Signature.model_validate_json(json.dumps(doc))
