"""The split's audit, for a person to read before training on it: what each filter moved, how far, and why.

Per filter: documents moved, their share of the corpus, the median and the largest shift (knowledge date minus
publication date, as the document ended up), the largest moves with their evidence sentence, and a histogram
of shifts. A split that moves more than `warn_fraction` of the corpus, or any document by more than
`warn_shift_years`, gets a loud warning naming the filter, the count and its most frequent evidence, so that
nobody trains on a broken split unaware. The `updated_at` row is the contract's own rule (a revision is known
from its revision), applied whether or not the revision filter runs.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

LARGEST = 20  # moves listed per filter
DAY_US = 86_400_000_000
SUMMARY_SCHEMA = pa.schema([("filter", pa.string()), ("moved", pa.int64()), ("share", pa.float64()),
                            ("median_shift_days", pa.float64()), ("max_shift_days", pa.float64()),
                            ("top_evidence", pa.list_(pa.string()))])
MOVES_SCHEMA = pa.schema([("filter", pa.string()), ("doc_id", pa.string()),
                          ("published_at", pa.timestamp("us", tz="UTC")),
                          ("knowledge_date", pa.timestamp("us", tz="UTC")), ("shift_days", pa.float64()),
                          ("evidence", pa.string())])
_EVIDENCE_KEY = re.compile(r"'([^']+)'|(\d{4}-\d{2}-\d{2})|(\w+\|\w+)")


@dataclass
class Audit:
    summary: pa.Table  # SUMMARY_SCHEMA, one row per filter that moved anything
    largest: pa.Table  # MOVES_SCHEMA, the LARGEST largest moves of each filter
    documents: int  # documents in the corpus (valid rows)
    warnings: list[str] = field(default_factory=list)
    shifts: dict[str, list[float]] = field(default_factory=dict)  # filter → every shift, days (the histogram)


def build_audit(acted: pa.Table, documents: int, warn_fraction: float, warn_shift_years: float) -> Audit:
    """`acted`: the documents a filter re-dated (doc_id, published_at, knowledge_date, redated_by, evidence)."""
    import polars as pl

    frame = pl.from_arrow(acted.select(["doc_id", "published_at", "knowledge_date", "redated_by", "evidence"]))
    moved = frame.filter(pl.col("redated_by").list.len() > 0).with_columns(
        ((pl.col("knowledge_date") - pl.col("published_at")).dt.total_microseconds() / DAY_US).alias("shift_days"))
    per_filter = moved.explode("redated_by").rename({"redated_by": "filter"})
    summary, largest, shifts, warnings = [], [], {}, []
    for (name,), part in sorted(per_filter.group_by("filter"), key=lambda item: item[0][0]):
        part = part.sort(["shift_days", "doc_id"], descending=[True, False])
        days = part["shift_days"]
        keys = Counter(_evidence_key(e) for e in part["evidence"].to_list() if e)
        top = [f"{key} ({count})" for key, count in keys.most_common(5) if key]
        row = {"filter": name, "moved": part.height, "share": part.height / max(documents, 1),
               "median_shift_days": float(days.median()), "max_shift_days": float(days.max()), "top_evidence": top}
        summary.append(row)
        shifts[name] = days.to_list()
        largest.extend(part.head(LARGEST).select(MOVES_SCHEMA.names[1:]).with_columns(
            pl.lit(name).alias("filter")).to_dicts())
        if row["share"] > warn_fraction or row["max_shift_days"] > 365.25 * warn_shift_years:
            warnings.append(
                f"WARNING: filter {name!r} moved {part.height:,} of {documents:,} documents ({row['share']:.1%}; "
                f"warn_fraction {warn_fraction:.0%}), the largest by {_span(row['max_shift_days'])} (warn_shift_years "
                f"{warn_shift_years:g}); most frequent evidence: {', '.join(top) or 'none'}. Read the audit before "
                f"training on this split (vintage split --dry-run prints it), or tune filters.{name} in the config.")
    return Audit(pa.Table.from_pylist(summary, schema=SUMMARY_SCHEMA),
                 pa.Table.from_pylist(largest, schema=MOVES_SCHEMA), documents, warnings, shifts)


def _evidence_key(evidence: str) -> str | None:
    """The term, date or result an evidence string is about (to count the most frequent)."""
    m = _EVIDENCE_KEY.search(evidence.split(": ", 1)[-1] if evidence.startswith("updated_at") else evidence)
    return next((g for g in m.groups() if g), None) if m else evidence.split(":")[0][:40]


def _span(days: float) -> str:
    return f"{days / 365.25:.1f} years" if days >= 365.25 else f"{days:.1f} days"


def write_audit(audit: Audit, directory: Path, plot: bool = True) -> None:
    """audit.parquet (per filter), audit_moves.parquet (the largest moves) and, where a filter moved anything
    and `plot`, audit_shifts.png."""
    pq.write_table(audit.summary, directory / "audit.parquet")
    pq.write_table(audit.largest, directory / "audit_moves.parquet")
    if plot and audit.shifts:
        _plot_shifts(audit, directory / "audit_shifts.png")


def _plot_shifts(audit: Audit, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(audit.shifts)
    fig, axes = plt.subplots(len(names), 1, figsize=(7, 1.9 * len(names) + 0.6), squeeze=False)
    edges = np.logspace(-2, np.log10(365.25 * 200), 40)  # 15 minutes to two centuries
    for ax, name in zip(axes[:, 0], names):
        days = np.clip(np.asarray(audit.shifts.get(name, []), dtype=float), edges[0], edges[-1])
        ax.hist(days, bins=edges, color="#4c72b0")
        ax.set_xscale("log")
        ax.set_title(f"{name}: {len(days):,} of {audit.documents:,} documents moved", fontsize=9, loc="left")
        ax.set_ylabel("documents", fontsize=8)
        ticks = [1 / 24, 1, 7, 30.4, 365.25, 3652.5, 36525]
        ax.set_xticks(ticks, ["1 h", "1 d", "1 w", "1 mo", "1 y", "10 y", "100 y"], fontsize=8)
    axes[-1, 0].set_xlabel("shift: knowledge date minus publication date (log scale)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_audit(audit: Audit, largest: int = LARGEST) -> str:
    """The audit as text: one line per filter, then each filter's largest moves with their evidence."""
    lines = [f"audit: {audit.documents:,} documents"]
    if audit.summary.num_rows == 0:
        return lines[0] + "; no filter moved any document"
    lines.append(f"{'filter':<14} {'moved':>8} {'share':>7} {'median shift':>13} {'largest':>12}  top evidence")
    for r in audit.summary.to_pylist():
        lines.append(f"{r['filter']:<14} {r['moved']:>8,} {r['share']:>7.2%} {_span(r['median_shift_days']):>13} "
                     f"{_span(r['max_shift_days']):>12}  {', '.join(r['top_evidence'][:3])}")
    if largest:
        for name in audit.summary["filter"].to_pylist():
            moves = audit.largest.filter(pc.equal(audit.largest["filter"], name)).slice(0, largest).to_pylist()
            lines.append(f"\n{name}: the {len(moves)} largest moves")
            for m in moves:
                lines.append(f"  {m['doc_id']}  {m['published_at']:%Y-%m-%d} -> {m['knowledge_date']:%Y-%m-%d} "
                             f"({_span(m['shift_days'])})  {m['evidence'] or ''}")
    return "\n".join(lines)
