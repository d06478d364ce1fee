"""revision: a document revised after publication is known only from its revision (`updated_at`)."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from corpora.filters import Filter, PROPOSAL_SCHEMA, register


@register("revision")
class Revision(Filter):
    def apply(self, batch: pa.Table, context=None) -> pa.Table:
        updated = batch["updated_at"]
        later = pc.fill_null(pc.greater(updated, batch["published_at"]), False)
        dates = pc.if_else(later, updated, pa.scalar(None, updated.type))
        evidence = pc.if_else(later, pa.scalar("updated_at after published_at"), pa.scalar(None, pa.string()))
        return pa.table({"date": dates, "drop": pa.nulls(batch.num_rows, pa.string()), "evidence": evidence},
                        schema=PROPOSAL_SCHEMA)
