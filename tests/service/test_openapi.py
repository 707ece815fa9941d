"""The documented ``/score`` record (service/openapi.py): every column name training accepts,
and a fallback when the docs still cannot express a schema. Served for real in
tests/service/test_served_edges.py."""

import dataclasses
import json
import logging
import math
from typing import Any

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pipelines.errors import SchemaError
from pipelines.tabular.schema import Schema, infer_schema
from service.openapi import record_model

# Names pydantic refuses as field names, each for another reason: leading underscores
# (MongoDB's _id and __v), its own namespace, BaseModel's attributes, not identifiers.
AWKWARD = ["_id", "__v", "model_dump", "model_validate", "model_config", "model_fields", "json",
           "copy", "dict", "schema", "validate", "fields", "__class__", "__dict__", "a b",
           "amount (€)", "1st", "class", "", " ", "records", "column_0"]


def schema_of(names: list[str], excluded: list[str]) -> Schema:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({name: rng.normal(size=50) for name in names + excluded})
    return infer_schema(frame, exclude=excluded)


def check_documents(schema: Schema) -> None:
    model = record_model(schema)
    assert model is not dict[str, Any], "fell back to untyped records"
    document = json.loads(json.dumps(model.model_json_schema(), allow_nan=False))
    assert list(document["properties"]) == [*schema.names, *schema.exclude]
    assert document["required"] == list(schema.names)
    assert [p["title"] for p in document["properties"].values()] == list(document["properties"])
    record = {name: 1.5 for name in schema.names}
    assert model.model_validate(record).model_dump(by_alias=True, exclude_unset=True) == record


def test_names_pydantic_refuses_are_documented():
    check_documents(schema_of([n for n in AWKWARD if n not in ("_id", "model_validate")],
                              ["_id", "model_validate"]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.text(max_size=12), min_size=1, max_size=6, unique=True), st.data())
def test_every_name_training_accepts_is_documented(names, data):
    excluded = data.draw(st.lists(st.sampled_from(names), unique=True, max_size=len(names) - 1))
    try:
        schema = schema_of([n for n in names if n not in excluded], excluded)
    except SchemaError:
        assume(False)  # a name training refuses needs no docs
    check_documents(schema)


def test_a_schema_the_docs_cannot_express_falls_back_to_untyped_records(caplog):
    """A NaN in the JSON schema would make /docs.json a 500 (strict JSON): the record is then
    documented untyped, with a warning, and the service still starts."""
    schema = schema_of(["amount"], [])
    broken = Schema((dataclasses.replace(schema.columns[0], min=math.nan),), (), schema.n_rows)
    with caplog.at_level(logging.WARNING, logger="flowad.service"):
        assert record_model(broken) == dict[str, Any]
    assert "/docs.json documents untyped records" in caplog.text
