"""The manifest: a typed, frozen record of what a checkpoint holds and which names are one tensor.

Every file paramio writes carries one (as JSON); files from other tools get one derived from what they
store. The :class:`Signature` is its structural part (no checksums, no metadata), used to validate a
checkpoint against a model or a saved schema.
"""

from __future__ import annotations

import json
from math import prod
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, field_validator, model_validator

from .dtype_names import NAMES as DTYPE_NAMES

__all__ = [
    "MANIFEST_VERSION",
    "SIGNATURE_VERSION",
    "GRAD_PREFIX",
    "DType",
    "Kind",
    "Producer",
    "TensorEntry",
    "ViewEntry",
    "TieGroup",
    "Manifest",
    "SignatureEntry",
    "Signature",
    "json_schemas",
]

MANIFEST_VERSION = "paramio.manifest/1"
SIGNATURE_VERSION = "paramio.signature/1"
#: Gradients are stored apart from parameters, under this key prefix.
GRAD_PREFIX = "grad/"

DType = Literal[DTYPE_NAMES]  # type: ignore[valid-type]
Kind = Literal["parameter", "buffer", "gradient", "constant"]
Name = Annotated[str, Field(min_length=1, max_length=4096)]
Shape = tuple[NonNegativeInt, ...]
Checksum = Annotated[str, Field(pattern=r"^(xxh3_64:[0-9a-f]{16}|sha256:[0-9a-f]{64})$")]


class StrictBase(BaseModel):
    """Frozen, no unknown keys, no type coercion: a manifest says exactly what it means."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class Producer(StrictBase):
    """Who wrote the file: paramio and torch versions, or the stock tool a manifest was derived from."""

    name: Name
    version: str | None = None
    torch: str | None = None


class TensorEntry(StrictBase):
    """One stored tensor, in file order."""

    name: Name
    dtype: DType
    shape: Shape
    kind: Kind = "parameter"
    requires_grad: bool = False
    checksum: Checksum | None = None

    @property
    def numel(self) -> int:
        return prod(self.shape)

    @model_validator(mode="after")
    def _gradient_names(self) -> TensorEntry:
        if (self.kind == "gradient") != self.name.startswith(GRAD_PREFIX):
            raise ValueError(
                f"tensor `{self.name}`: gradients, and only gradients, are named `{GRAD_PREFIX}<parameter>`"
            )
        return self


class ViewEntry(StrictBase):
    """A partial alias: a name that is a strided view (slice, transpose) into a stored tensor's data.

    ``offset`` and ``stride`` count elements of the base's flat, contiguous data.
    """

    name: Name
    base: Name
    offset: NonNegativeInt
    shape: Shape
    stride: tuple[NonNegativeInt, ...]
    kind: Kind = "parameter"
    requires_grad: bool = False

    @model_validator(mode="after")
    def _rank(self) -> ViewEntry:
        if len(self.shape) != len(self.stride):
            raise ValueError(f"view `{self.name}`: shape and stride have different ranks")
        return self

    @property
    def extent(self) -> int:
        """Elements of the base the view reaches: its last element's index + 1 (0 when empty)."""
        if prod(self.shape) == 0:
            return 0
        return self.offset + sum((n - 1) * s for n, s in zip(self.shape, self.stride, strict=True)) + 1


class TieGroup(StrictBase):
    """Names that are one and the same tensor: the canonical name (stored) and its aliases (not stored)."""

    canonical: Name
    aliases: tuple[Name, ...] = Field(min_length=1)

    @property
    def names(self) -> tuple[str, ...]:
        return (self.canonical, *self.aliases)


def _check_ties(stored: dict[str, object], ties: tuple[TieGroup, ...]) -> None:
    """The tie rules shared by manifests and signatures."""
    seen: dict[str, str] = {}
    for group in ties:
        if group.canonical not in stored:
            raise ValueError(f"tie group `{group.canonical}`: its canonical name is not a stored tensor or view")
        for alias in group.aliases:
            if alias in stored:
                raise ValueError(f"alias `{alias}` of `{group.canonical}` is also stored; an alias is a name only")
            if alias in seen:
                raise ValueError(f"alias `{alias}` is in two tie groups (`{seen[alias]}` and `{group.canonical}`)")
            seen[alias] = group.canonical
    canonicals = [g.canonical for g in ties]
    if len(set(canonicals)) != len(canonicals):
        raise ValueError("two tie groups share a canonical name; merge them")


def _check_views(entries: dict[str, TensorEntry | SignatureEntry], views: tuple[ViewEntry, ...]) -> None:
    for view in views:
        base = entries.get(view.base)
        if base is None or base.kind == "gradient":
            raise ValueError(f"view `{view.name}`: base `{view.base}` is not a stored parameter or buffer")
        if view.extent > prod(base.shape):
            raise ValueError(f"view `{view.name}` reaches past the end of its base `{view.base}`")
        if prod(view.shape) > prod(base.shape):
            # An expanded view (stride 0) could declare any number of elements over a tiny base.
            raise ValueError(f"view `{view.name}` has more elements than its base `{view.base}`")


def _unique(names: list[str]) -> dict[str, None]:
    seen: dict[str, None] = {}
    for name in names:
        if name in seen:
            raise ValueError(f"name `{name}` appears twice")
        seen[name] = None
    return seen


class Manifest(StrictBase):
    """Everything a checkpoint file holds, in order, with its tie groups and user metadata."""

    schema_version: Literal["paramio.manifest/1"] = MANIFEST_VERSION
    producer: Producer
    model_class: str | None = None
    tensors: tuple[TensorEntry, ...] = ()
    views: tuple[ViewEntry, ...] = ()
    ties: tuple[TieGroup, ...] = ()
    metadata: dict[str, str] = Field(default_factory=dict)

    @field_validator("metadata")
    @classmethod
    def _sorted_metadata(cls, value: dict[str, str]) -> dict[str, str]:
        # Sorted so that the same metadata always serializes to the same bytes.
        return dict(sorted(value.items()))

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        entries = {t.name: t for t in self.tensors}
        _unique([t.name for t in self.tensors] + [v.name for v in self.views])
        _check_views(entries, self.views)
        _check_ties({**entries, **{v.name: v for v in self.views}}, self.ties)
        for group in self.ties:
            if group.canonical in entries and entries[group.canonical].kind == "gradient":
                raise ValueError(f"gradient `{group.canonical}` cannot be tied; ties are between parameters")
        return self

    # -- derived views of the manifest ---------------------------------------------------------------
    def entry(self, name: str) -> TensorEntry:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)

    def alias_map(self) -> dict[str, str]:
        """alias -> canonical, over every tie group."""
        return {a: g.canonical for g in self.ties for a in g.aliases}

    def names(self) -> list[str]:
        """Every name a loaded checkpoint maps (stored tensors, views, aliases), gradients excluded."""
        out = [t.name for t in self.tensors if t.kind != "gradient"] + [v.name for v in self.views]
        return out + [a for g in self.ties for a in g.aliases]

    def to_json(self) -> str:
        """Compact, deterministic JSON (field order fixed by the model, metadata sorted)."""
        return self.model_dump_json(exclude_none=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        return cls.model_validate_json(text)

    def signature(self) -> Signature:
        """The structural part: names, dtypes, shapes, kinds, views and ties."""
        return Signature(
            tensors=tuple(
                SignatureEntry(name=t.name, dtype=t.dtype, shape=t.shape, kind=t.kind)
                for t in self.tensors
                if t.kind != "gradient"
            ),
            views=self.views,
            ties=self.ties,
        )


class SignatureEntry(StrictBase):
    """The structure of one stored tensor."""

    name: Name
    dtype: DType
    shape: Shape
    kind: Kind = "parameter"


class Signature(StrictBase):
    """The identity of a model or checkpoint: what a checkpoint must hold to load into it."""

    schema_version: Literal["paramio.signature/1"] = SIGNATURE_VERSION
    tensors: tuple[SignatureEntry, ...] = ()
    views: tuple[ViewEntry, ...] = ()
    ties: tuple[TieGroup, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> Signature:
        entries = {t.name: t for t in self.tensors}
        _unique([t.name for t in self.tensors] + [v.name for v in self.views])
        _check_views(entries, self.views)
        _check_ties({**entries, **{v.name: v for v in self.views}}, self.ties)
        return self

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str | bytes) -> Signature:
        return cls.model_validate_json(text)

    def shapes(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        """name -> (dtype, shape) for every name, aliases and views included."""
        out: dict[str, tuple[str, tuple[int, ...]]] = {t.name: (t.dtype, t.shape) for t in self.tensors}
        dtypes = dict(out)
        for v in self.views:
            out[v.name] = (dtypes[v.base][0], v.shape)
        for g in self.ties:
            for a in g.aliases:
                out[a] = out[g.canonical]
        return out


def json_schemas() -> dict[str, str]:
    """File name -> JSON Schema text for the models, as checked in under ``schemas/``."""
    out = {}
    for filename, model in (("manifest.schema.json", Manifest), ("signature.schema.json", Signature)):
        schema = model.model_json_schema()
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"https://paramio.dev/schemas/{filename}"
        out[filename] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return out
