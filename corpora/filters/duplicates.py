"""duplicates: exact and near copies; the earliest copy keeps its date, every later copy is dropped.

Candidates come from two kinds of buckets, both keyed by a 64-bit hash:
- cores: the normalised text (exact duplicates share it), and the text with up to `max_trim_words` words
  cut from its start and end; a trimmed core that equals another document's whole text is a syndicated
  copy under a new header or footer. Trimmed cores are only paired with whole texts, never with each
  other, so templated siblings ("A beat estimates" / "B beat estimates") do not pair through them;
- MinHash/LSH bands of word 3-shingles, for edits inside the text. A band bucket larger than
  `max_bucket` holds template text shared by many documents, and is not paired (counted in the context).
A candidate is a near duplicate when it contains at least `containment` of the other's shingles (of the
shorter text) and their shingle Jaccard is at least `threshold`: on short templated news, Jaccard alone
cannot tell a copy from a sibling; containment can. A copy never moves an earlier one.
"""
from __future__ import annotations

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
WHOLE, TRIMMED, BAND = 0, 1, 2  # kinds of observation rows


@dataclass
class Params:
    """Near-duplicate sensitivity."""

    near: bool = doc("also drop near duplicates (otherwise exact ones only)", True)
    containment: float = doc("share of the shorter text's shingles the other must contain", 0.95)
    threshold: float = doc("and the shingle Jaccard at least this", 0.5)
    max_trim_words: int = doc("header/footer words a syndicated copy may add at each end", 3)
    bands: int = doc("LSH bands (0: no MinHash candidates)", 8)
    rows_per_band: int = doc("MinHash values per band (bands x rows = permutations)", 3)
    shingle: int = doc("words per shingle", 3)
    seed: int = doc("seed of the MinHash permutations", 0)
    max_bucket: int = doc("LSH buckets larger than this are template text and not paired", 16)

    def __post_init__(self):
        if not (0 < self.threshold <= 1 and 0 < self.containment <= 1) or min(
                self.rows_per_band, self.shingle) < 1 or self.bands < 0 or self.max_trim_words < 0:
            raise ValueError("threshold and containment in (0, 1]; rows_per_band, shingle >= 1; bands, "
                             "max_trim_words >= 0")


def normalise(text: str) -> str:
    return _NON_WORD.sub(" ", text.lower()).strip()


def _shingles_of_words(words: list[str], size: int) -> set[str]:
    if len(words) <= size:
        return {" ".join(words)}
    return {" ".join(words[i:i + size]) for i in range(len(words) - size + 1)}


def shingles(text: str, size: int) -> set[str]:
    return _shingles_of_words(normalise(text).split(), size)


def _hash64(value: str) -> int:
    return int.from_bytes(hashlib.blake2b(value.encode(), digest_size=8).digest(), "little", signed=True)


def _mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection of uint64 that scrambles every bit (wrapping multiplication)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def similarity(a: str, b: str, size: int) -> tuple[float, float]:
    """(Jaccard, containment of the smaller shingle set) of two texts."""
    return _similarity(shingles(a, size), shingles(b, size))


def _similarity(sa: set, sb: set) -> tuple[float, float]:
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
        h = np.asarray(hashes, dtype=np.int64).view(np.uint64)
        permuted = _mix64(h[:, None] ^ self._seeds[None, :])
        return np.minimum.reduceat(permuted, np.asarray(offsets[:-1]), axis=0)

    def observe(self, batch: pa.Table) -> pa.Table:
        texts = batch["text"].to_pylist()
        ids = batch["doc_id"].to_pylist()
        dates = batch["published_at"].to_pylist()
        buckets, doc_ids, published, kinds = [], [], [], []

        def emit(bucket, doc_id, date, kind):
            buckets.append(bucket)
            doc_ids.append(doc_id)
            published.append(date)
            kinds.append(kind)

        trim = self.params.max_trim_words if self.params.near else 0
        for doc_id, date, text in zip(ids, dates, texts):
            words = normalise(text).split()
            emit(_hash64("core:" + " ".join(words)), doc_id, date, WHOLE)
            for head in range(trim + 1):
                for tail in range(trim + 1):
                    if (head or tail) and len(words) - head - tail >= self.params.shingle:
                        emit(_hash64("core:" + " ".join(words[head:len(words) - tail])), doc_id, date, TRIMMED)
        if self.params.near and self.params.bands and texts:
            sig = self.signatures(texts)
            r = self.params.rows_per_band
            for band in range(self.params.bands):
                block = np.ascontiguousarray(sig[:, band * r:(band + 1) * r])
                for doc_id, date, row in zip(ids, dates, block):
                    emit(_hash64(f"band{band}:" + row.tobytes().hex()), doc_id, date, BAND)
        return pa.table({"bucket": pa.array(buckets, pa.int64()), "doc_id": pa.array(doc_ids, pa.string()),
                         "date": pa.array(published, UTC_TIMESTAMP), "kind": pa.array(kinds, pa.int8())})

    def reduce(self, observations: pa.Table) -> pa.Table:
        """Candidate pairs (later, earlier, kind) from complete bucket groups."""
        frame = pl.from_arrow(observations).unique(["bucket", "doc_id", "kind"]).sort(["bucket", "date", "doc_id"])
        frame = frame.with_columns(pl.int_range(pl.len()).over("bucket").alias("rank"))
        core = frame.filter(pl.col("kind") != BAND)
        whole = core.filter(pl.col("kind") == WHOLE)
        # every member of a core bucket against every whole-text member (never trimmed with trimmed)
        pairs = core.join(whole, on="bucket", suffix="_w").filter(pl.col("doc_id") != pl.col("doc_id_w"))
        pairs = pairs.filter((pl.col("kind") == TRIMMED) | (pl.col("rank") > pl.col("rank_w")))
        pairs = pairs.select(
            pl.when(pl.col("rank") > pl.col("rank_w")).then(pl.col("doc_id")).otherwise(pl.col("doc_id_w")).alias("later"),
            pl.when(pl.col("rank") > pl.col("rank_w")).then(pl.col("doc_id_w")).otherwise(pl.col("doc_id")).alias("earlier"),
            ((pl.col("kind") == WHOLE)).alias("exact"),
        )
        band = frame.filter(pl.col("kind") == BAND).with_columns(pl.len().over("bucket").alias("size"))
        small = band.filter((pl.col("size") > 1) & (pl.col("size") <= self.params.max_bucket))
        band_pairs = small.join(small.select("bucket", "doc_id", "rank"), on="bucket", suffix="_e") \
            .filter(pl.col("rank_e") < pl.col("rank")) \
            .select(pl.col("doc_id").alias("later"), pl.col("doc_id_e").alias("earlier"), pl.lit(False).alias("exact"))
        skipped = band.filter(pl.col("size") > self.params.max_bucket).select("bucket").unique().height
        out = pl.concat([pairs, band_pairs]).group_by(["later", "earlier"]).agg(pl.col("exact").any())
        out = out.sort(["later", "earlier"]).with_columns(pl.lit(0, pl.Int64).alias("skipped_buckets"))
        if skipped:
            out = pl.concat([out, pl.DataFrame({"later": [None], "earlier": [None], "exact": [None],
                                                "skipped_buckets": [skipped]},
                                               schema=out.schema)])
        return out.to_arrow().cast(pa.schema([pa.field("later", pa.string()), pa.field("earlier", pa.string()),
                                              pa.field("exact", pa.bool_()), pa.field("skipped_buckets", pa.int64())]))

    def finalize(self, reduced: pa.Table, fetch: Callable[[list[str]], pa.Table] | None = None) -> dict:
        """Verify near candidates on their shingles, then cluster: every copy points to its cluster's earliest."""
        frame = pl.from_arrow(reduced)
        self.skipped_buckets = int(frame["skipped_buckets"].sum() or 0)
        frame = frame.drop_nulls("later").group_by(["later", "earlier"]).agg(pl.col("exact").any())
        if frame.height == 0:
            return {}
        if fetch is None:
            raise ValueError("duplicates.finalize needs `fetch` to read candidate texts and dates")
        ids = sorted(set(frame["later"].to_list()) | set(frame["earlier"].to_list()))
        docs = fetch(ids)
        text = dict(zip(docs["doc_id"].to_pylist(), docs["text"].to_pylist()))
        order = {d: (p, d) for d, p in zip(docs["doc_id"].to_pylist(), docs["published_at"].to_pylist())}
        sets: dict[str, set] = {}

        def shingle_set(doc_id):
            if doc_id not in sets:
                sets[doc_id] = shingles(text[doc_id], self.params.shingle)
            return sets[doc_id]

        accepted = []
        for a, b, exact in frame.select(["later", "earlier", "exact"]).iter_rows():
            if exact:
                accepted.append((a, b, "exact_duplicate"))
                continue
            jaccard, containment = _similarity(shingle_set(a), shingle_set(b))
            if jaccard >= self.params.threshold and containment >= self.params.containment:
                accepted.append((a, b, "near_duplicate"))
        parent = {x: x for x in ids}

        def root(x):
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        for a, b, _ in accepted:
            ra, rb = root(a), root(b)
            if ra != rb:
                first, second = sorted((ra, rb), key=order.__getitem__)
                parent[second] = first
        kind: dict[str, str] = {}
        for a, _, k in accepted:  # an exact match wins over a near one for the label
            kind[a] = "exact_duplicate" if "exact_duplicate" in (k, kind.get(a)) else k
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
