"""Edits to a written split that a user's corpus goes through: a document corrected in place under its id."""
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from vintage.holdout import is_holdout


def correct_one_text(split: Path, slice_name: str) -> str:
    """Rewrite one trained (not held-out) document of `slice_name` in place, under the same doc_id, as a corrected
    re-release would; returns its id."""
    path = next((split / "slices" / f"slice={slice_name}").glob("*.parquet"))
    table = pq.read_table(path)
    texts, ids = table["text"].to_pylist(), table["doc_id"].to_pylist()
    i = next(i for i, d in enumerate(ids) if not is_holdout(d, 20))
    texts[i] = texts[i] + " Corrected: the figures were restated."
    pq.write_table(table.set_column(table.schema.get_field_index("text"), "text", pa.array(texts, pa.string())), path)
    return ids[i]
