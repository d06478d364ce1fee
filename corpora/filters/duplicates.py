"""duplicates: exact (hash of the normalised text) and near (MinHash/LSH on word 3-shingles) copies.

The earliest copy (published_at, then doc_id) keeps its date; every later copy is dropped with the id
of the copy it repeats. A copy never moves an earlier one. LSH candidates (documents sharing a band of
`rows_per_band` MinHash values) are verified on their shingles before anything is dropped: a near copy
contains almost all of the other's shingles (a syndicated story under a new header or footer), while
templated siblings ("A beat estimates" / "B beat estimates") replace content; Jaccard alone cannot tell
these apart on short texts, containment can.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np
import polars as pl
import pyarrow as pa

from corpora.config import doc
from corpora.filters import Filter, proposals, register
from corpora.schema import UTC_TIMESTAMP

_NON_WORD = re.compile(r"[^\w]+")


@dataclass
class Params:
    """Near-duplicate sensitivity."""

    near: bool = doc("also drop near duplicates (otherwise exact ones only)", True)
    containment: float = doc("share of the shorter text's shingles the other must contain", 0.95)
    threshold: float = doc("and the shingle Jaccard at least this", 0.5)
    bands: int = doc("LSH bands", 16)
    rows_per_band: int = doc("MinHash values per band (bands x rows = permutations)", 3)
    shingle: int = doc("words per shingle", 3)
    seed: int = doc("seed of the MinHash permutations", 0)
    max_bucket: int = doc("buckets up to this size are compared pairwise", 64)
    window: int = doc("in larger buckets, each document is compared with this many before it", 16)

    def __post_init__(self):
        if not (0 < self.threshold <= 1 and 0 < self.containment <= 1) or min(
                self.bands, self.rows_per_band, self.shingle) < 1:
            raise ValueError("threshold and containment must be in (0, 1]; bands, rows_per_band and shingle >= 1")


def normalise(text: str) -> str:
    return _NON_WORD.sub(" ", text.lower()).strip()


def shingles(text: str, size: int) -> set[str]:
    words = normalise(text).split()
    if len(words) <= size:
        return {" ".join(words)}
    return {" ".join(words[i:i + size]) for i in range(len(words) - size + 1)}


def _hash64(value: str) -> int:
    return int.from_bytes(hashlib.blake2b(value.encode(), digest_size=8).digest(), "little")


def _mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection of uint64 that scrambles every bit (wrapping multiplication)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def similarity(a: str, b: str, size: int) -> tuple[float, float]:
    """(Jaccard, containment of the smaller shingle set) of two texts."""
    sa, sb = shingles(a, size), shingles(b, size)
    shared = len(sa & sb)
    return shared / max(1, len(sa | sb)), shared / max(1, min(len(sa), len(sb)))


@register("duplicates")
class Duplicates(Filter):
    Params = Params
    key = "bucket"

    def __init__(self, params=None):
        super().__init__(params)
        rng = np.random.default_rng(self.params.seed)
        perms = self.params.bands * self.params.rows_per_band
        self._seeds = rng.integers(0, np.iinfo(np.uint64).max, perms, dtype=np.uint64, endpoint=True)

    def signatures(self, texts: list[str]) -> np.ndarray:
        """MinHash signatures, one row per text: per permutation i, min over shingles of mix(h ^ seed_i)."""
        hashes, offsets = [], [0]
        for text in texts:
            hashes.extend(_hash64(s) for s in shingles(text, self.params.shingle))
            offsets.append(len(hashes))
        permuted = _mix64(np.asarray(hashes, dtype=np.uint64)[:, None] ^ self._seeds[None, :])
        return np.minimum.reduceat(permuted, np.asarray(offsets[:-1]), axis=0)

    def observe(self, batch: pa.Table) -> pa.Table:
        texts = batch["text"].to_pylist()
        ids = batch["doc_id"].to_pylist()
        dates = batch["published_at"].to_pylist()
        buckets, doc_ids, published = [], [], []
        for doc_id, date, text in zip(ids, dates, texts):
            digest = hashlib.blake2b(normalise(text).encode(), digest_size=12).hexdigest()
            buckets.append(f"x:{digest}")
            doc_ids.append(doc_id)
            published.append(date)
        if self.params.near and texts:
            sig = self.signatures(texts)
            r = self.params.rows_per_band
            for band in range(self.params.bands):
                block = np.ascontiguousarray(sig[:, band * r:(band + 1) * r])
                for doc_id, date, row in zip(ids, dates, block):
                    buckets.append(f"b{band}:{hashlib.blake2b(row.tobytes(), digest_size=12).hexdigest()}")
                    doc_ids.append(doc_id)
                    published.append(date)
        return pa.table({"bucket": pa.array(buckets, pa.string()), "doc_id": pa.array(doc_ids, pa.string()),
                         "date": pa.array(published, UTC_TIMESTAMP)})

    def reduce(self, observations: pa.Table) -> pa.Table:
        """Candidate pairs per bucket: every pair in a bucket of at most `max_bucket` documents; in a larger
        one (templated text shares shingles) each document with the `window` documents before it."""
        frame = pl.from_arrow(observations).sort(["bucket", "date", "doc_id"]).with_columns(
            pl.len().over("bucket").alias("size"), pl.int_range(pl.len()).over("bucket").alias("rank"))
        frame = frame.filter(pl.col("size") > 1)
        small = frame.filter(pl.col("size") <= self.params.max_bucket).select("bucket", "doc_id", "rank")
        pairs = [small.join(small, on="bucket", suffix="_e").filter(pl.col("rank_e") < pl.col("rank"))
                 .select(pl.col("doc_id").alias("later"), pl.col("doc_id_e").alias("earlier"), "bucket")]
        large = frame.filter(pl.col("size") > self.params.max_bucket)
        for lag in range(1, self.params.window + 1):
            pairs.append(large.with_columns(pl.col("doc_id").shift(lag).over("bucket").alias("earlier"))
                         .select(pl.col("doc_id").alias("later"), "earlier", "bucket"))
        pairs = pl.concat(pairs).filter(pl.col("earlier").is_not_null())
        pairs = pairs.with_columns(pl.col("bucket").str.starts_with("x:").alias("exact")).drop("bucket")
        pairs = pairs.group_by(["later", "earlier"]).agg(pl.col("exact").any()).sort(["later", "earlier"])
        return pairs.to_arrow().cast(pa.schema([pa.field("later", pa.string()), pa.field("earlier", pa.string()),
                                                pa.field("exact", pa.bool_())]))

    def finalize(self, reduced: pa.Table, fetch: Callable[[list[str]], pa.Table] | None = None) -> dict:
        """Verify near candidates on their texts, then cluster: every copy points to its cluster's earliest."""
        frame = pl.from_arrow(reduced).group_by(["later", "earlier"]).agg(pl.col("exact").any())
        exact = frame.filter(pl.col("exact"))
        candidates = frame.filter(~pl.col("exact"))
        accepted = [(a, b, "exact_duplicate") for a, b in exact.select(["later", "earlier"]).iter_rows()]
        if len(candidates) and fetch is not None:
            ids = sorted(set(candidates["later"].to_list()) | set(candidates["earlier"].to_list()))
            docs = fetch(ids)
            text = dict(zip(docs["doc_id"].to_pylist(), docs["text"].to_pylist()))
            for a, b in candidates.select(["later", "earlier"]).iter_rows():
                jaccard, containment = similarity(text[a], text[b], self.params.shingle)
                if jaccard >= self.params.threshold and containment >= self.params.containment:
                    accepted.append((a, b, "near_duplicate"))
        if not accepted:
            return {}
        ids = sorted({x for a, b, _ in accepted for x in (a, b)})
        docs = fetch(ids) if fetch is not None else None
        order = {}
        if docs is not None:
            order = {d: (p, d) for d, p in zip(docs["doc_id"].to_pylist(), docs["published_at"].to_pylist())}
        parent = {x: x for x in ids}

        def root(x):
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        for a, b, _ in accepted:
            ra, rb = root(a), root(b)
            if ra != rb:
                first, second = sorted((ra, rb), key=lambda d: order.get(d, (dt.datetime.min, d)))
                parent[second] = first
        kind = {}
        for a, _, k in accepted:  # an exact match wins over a near one for the label
            kind[a] = "exact_duplicate" if k == "exact_duplicate" or kind.get(a) == "exact_duplicate" else k
        out = {}
        for x in ids:
            r = root(x)
            if r != x:
                out[x] = (kind.get(x, "near_duplicate"), f"copy of {r}")
        return out

    def apply(self, batch: pa.Table, context: dict) -> pa.Table:
        drops, evidence = [], []
        for doc_id in batch["doc_id"].to_pylist():
            hit = context.get(doc_id)
            drops.append(hit[0] if hit else None)
            evidence.append(hit[1] if hit else None)
        return proposals([None] * batch.num_rows, drops, evidence)
