"""The ``/score`` request schema, written from the served model's training schema.

``/docs.json`` then documents every column with its JSON type (so clients, and fuzzers such as
schemathesis, know what a record looks like) instead of ``list[dict]``. The schema is that of
the production model when the service module is imported; a model hot-swapped in later with
other columns is validated as usual, only the docs describe the first one. Validation itself
stays in :meth:`pipelines.schema.Schema.check`: the request is not parsed through this model.
"""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field, create_model

from pipelines.schema import BOOL_DTYPES, ColumnSpec, Schema

EXAMPLE_CATEGORIES = 10  # categories listed as examples per categorical column


def _field(spec: ColumnSpec) -> tuple[Any, Any]:
    """The annotation and pydantic field of one column."""
    if spec.kind == "categorical":
        kind: Any = str
        extra: dict[str, Any] = {"examples": list((spec.categories or ())[:EXAMPLE_CATEGORIES])}
        about = "text; a category unseen in training is scored as unlikely, not rejected"
    elif spec.dtype in BOOL_DTYPES:
        kind, extra, about = bool, {}, "true or false"
    else:
        kind, extra = float, {"examples": [spec.min]}
        about = f"a number ({spec.kind}; training range {spec.min:g} to {spec.max:g})"
    if spec.n_missing_train:
        kind, about = kind | None, f"{about}; null when missing"
    return kind, Field(..., description=about, json_schema_extra=extra or None)


def record_model(schema: Schema) -> type:
    """A pydantic model of one record: a required field per column, excluded columns (ids,
    labels) optional and untyped, nothing else allowed.

    Arguments:
        schema: the training schema of the served model.
    """
    fields: dict[str, Any] = {spec.name: _field(spec) for spec in schema.columns}
    for name in schema.exclude:
        fields[name] = (Any, Field(None, description="ignored by the model"))
    return create_model("Record", __config__=ConfigDict(extra="forbid"), **fields)


def served_schema(model: str) -> Schema | None:
    """The training schema of the model the service will serve, from its store metadata (no
    weights loaded), or None if there is none yet (the docs then show untyped records).

    Arguments:
        model: ``FLOWAD_MODEL``: a name (its production version) or ``name:version``.
    """
    import bentoml

    from pipelines import registry

    try:
        tag = registry.resolve(model, production_only=True)
        return Schema.from_dict(bentoml.models.get(tag).info.metadata["schema"])
    except Exception:  # any failure here only costs the docs their column types
        return None
