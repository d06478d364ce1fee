"""Arrow schemas of the data contracts (ARCHITECTURE.md): documents, quarantine, queries.

Every stage reads and writes these exact schemas; `conform` casts a table to one and says which column
is missing or of the wrong type, so a bad table fails at the boundary instead of deep inside a stage.
"""
from __future__ import annotations

import pyarrow as pa

UTC_TIMESTAMP = pa.timestamp("us", tz="UTC")

DOCUMENT_SCHEMA = pa.schema(
    [
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("published_at", UTC_TIMESTAMP, nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("updated_at", UTC_TIMESTAMP),
        pa.field("source", pa.string()),
        pa.field("entities", pa.list_(pa.string())),
    ]
)
REQUIRED_DOCUMENT_FIELDS = ("doc_id", "published_at", "text")
OPTIONAL_DOCUMENT_FIELDS = ("updated_at", "source", "entities")

QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("source_file", pa.string()),
        pa.field("row", pa.int64()),  # 0-based row (or line) number in source_file
        pa.field("doc_id", pa.string()),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string()),  # field and offending value, human-readable
        pa.field("original", pa.string()),  # the row as the user wrote it, JSON
    ]
)

QUERY_SCHEMA = pa.schema(
    [
        pa.field("query_id", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),  # "forecast" or "fact"
        pa.field("as_of", UTC_TIMESTAMP, nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("choices", pa.list_(pa.string()), nullable=False),
        pa.field("answer", pa.string(), nullable=False),
        pa.field("horizon", pa.string()),  # e.g. "report", "3m": when the answer becomes known
        pa.field("asset", pa.string()),
        pa.field("realized_return", pa.float64()),  # simple return over the horizon, fraction
        pa.field("event_id", pa.string()),
    ]
)


class SchemaError(ValueError):
    """A table does not match a data contract; the message names the column and the expected type."""


def conform(table: pa.Table, schema: pa.Schema, what: str) -> pa.Table:
    """Select and cast `table` to `schema`; optional (nullable) columns missing from it are filled with nulls."""
    columns = []
    for field in schema:
        if field.name not in table.column_names:
            if not field.nullable:
                raise SchemaError(f"{what}: missing required column {field.name!r} ({field.type})")
            columns.append(pa.nulls(table.num_rows, field.type))
            continue
        column = table[field.name]
        if column.type != field.type:
            try:
                column = column.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
                raise SchemaError(
                    f"{what}: column {field.name!r} is {column.type}, expected {field.type}: {err}"
                ) from err
        if not field.nullable and column.null_count:
            raise SchemaError(f"{what}: column {field.name!r} has {column.null_count} nulls, expected none")
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=schema)
