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

import numpy as np
import polars as pl
import pyarrow as pa

from corpora.config import doc
from corpora.filters import Filter, proposals, register
from corpora.schema import UTC_TIMESTAMP

_NON_WORD = re.compile(r"[^\w]+")
WHOLE, TRIMMED, BAND = 0, 1, 2  # kinds of observation rows
REDUCED_SCHEMA = pa.schema([
    pa.field("later", pa.string()), pa.field("earlier", pa.string()),
    pa.field("later_date", UTC_TIMESTAMP), pa.field("earlier_date", UTC_TIMESTAMP),
    pa.field("kind", pa.string()), pa.field("candidates", pa.int64()), pa.field("skipped_buckets", pa.int64()),
])


@dataclass
class Params:
    """Near-duplicate sensitivity."""

    near: bool = doc("also drop near duplicates (otherwise exact ones only)", True)
    containment: float = doc("share of the shorter text's shingles the other must contain", 0.95)
    threshold: float = doc("and the shingle Jaccard at least this", 0.5)
    max_trim_words: int = doc("header/footer words a syndicated copy may add at each end", 3)
    bands: int = doc("LSH bands (0: no MinHash candidates)", 4)
    rows_per_band: int = doc("MinHash values per band (bands x rows = permutations)", 4)
    shingle: int = doc("words per shingle", 3)
    seed: int = doc("seed of the MinHash permutations", 0)
    max_bucket: int = doc("LSH buckets larger than this are template text and not paired", 8)

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


def _words(text: pl.Expr) -> pl.Expr:
    """`normalise(text).split()` as a polars expression."""
    return text.str.to_lowercase().str.replace_all(r"[^\w]+", " ").str.strip_chars().str.split(" ") \
        .list.eval(pl.element().filter(pl.element() != ""))


def _shingle_table(texts: pl.Series, size: int) -> pl.DataFrame:
    """(row, hash) of every distinct word shingle of every text, sorted by row; a text of at most `size`
    words is one shingle (its whole text), as in `shingles`."""
    words = pl.DataFrame({"words": texts.to_frame().select(_words(pl.col("text")))["text"]}).with_row_index("row")
    words = words.with_columns(pl.col("words").list.len().alias("n"))
    short = words.filter(pl.col("n") <= size).select("row", pl.col("words").list.join(" ").alias("shingle"))
    long = words.filter(pl.col("n") > size).explode("words").with_columns(
        pl.concat_str([pl.col("words").shift(-k).over("row") for k in range(size)], separator=" ").alias("shingle"))
    long = long.filter(pl.col("shingle").is_not_null()).select("row", "shingle")
    table = pl.concat([short, long]).unique().select("row", pl.col("shingle").hash(seed=2).alias("hash"))
    return table.sort("row")


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
        shingle_table = _shingle_table(pl.Series("text", texts, pl.String), self.params.shingle)
        h = shingle_table["hash"].to_numpy()
        rows = shingle_table["row"].to_numpy()
        starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
        permuted = _mix64(h[:, None] ^ self._seeds[None, :])
        return np.minimum.reduceat(permuted, starts, axis=0)

    def observe(self, batch: pa.Table) -> pa.Table:
        """Rows (bucket, doc_id, date, kind, words, trim, text): whole and trimmed cores carry word counts,
        band rows carry the text, so that the reduce step can verify its candidates where they meet.
        Vectorised in polars; keys are polars' seeded 64-bit hashes (stable within one polars version)."""
        docs = pl.from_arrow(batch.select(["doc_id", "published_at", "text"])).rename({"published_at": "date"})
        docs = docs.with_columns(_words(pl.col("text")).alias("words")).with_columns(
            pl.col("words").list.len().cast(pl.Int32).alias("n"))
        parts = [docs.select("doc_id", "date", pl.col("words").list.join(" ").alias("core"),
                             pl.lit(WHOLE, pl.Int8).alias("kind"), pl.col("n").alias("words"),
                             pl.lit(0, pl.Int8).alias("trim"))]
        trim = self.params.max_trim_words if self.params.near else 0
        for head in range(trim + 1):
            for tail in range(trim + 1):
                if not (head or tail):
                    continue
                keep = docs.filter(pl.col("n") - head - tail >= self.params.shingle)
                parts.append(keep.select(
                    "doc_id", "date", pl.col("words").list.slice(head, pl.col("n") - head - tail).list.join(" ")
                    .alias("core"), pl.lit(TRIMMED, pl.Int8).alias("kind"), pl.col("n").alias("words"),
                    pl.lit(head + tail, pl.Int8).alias("trim")))
        cores = pl.concat(parts).select(
            pl.concat_str([pl.lit("core:"), pl.col("core")]).hash(seed=1).reinterpret(signed=True).alias("bucket"),
            "doc_id", "date", "kind", "words", "trim", pl.lit(None, pl.String).alias("text"))
        frames = [cores]
        if self.params.near and self.params.bands and docs.height:
            sig = self.signatures(docs["text"].to_list())
            r = self.params.rows_per_band
            for band in range(self.params.bands):
                block = np.ascontiguousarray(sig[:, band * r:(band + 1) * r])
                keys = _mix64(np.bitwise_xor.reduce(_mix64(block + np.arange(r, dtype=np.uint64)), axis=1)
                              ^ np.uint64(band))
                frames.append(docs.select(
                    pl.Series("bucket", keys.view(np.int64)), "doc_id", "date", pl.lit(BAND, pl.Int8).alias("kind"),
                    pl.lit(0, pl.Int32).alias("words"), pl.lit(0, pl.Int8).alias("trim"), "text"))
        out = pl.concat(frames).to_arrow()
        return out.cast(pa.schema([("bucket", pa.int64()), ("doc_id", pa.string()), ("date", UTC_TIMESTAMP),
                                   ("kind", pa.int8()), ("words", pa.int32()), ("trim", pa.int8()),
                                   ("text", pa.string())]))

    def reduce(self, observations: pa.Table) -> pa.Table:
        """Verified duplicate pairs (later, earlier, their dates, kind) from complete bucket groups."""
        size = self.params.shingle
        frame = pl.from_arrow(observations)
        frame = frame.filter(pl.len().over("bucket") > 1)  # most buckets hold one document: nothing to pair
        frame = frame.unique(["bucket", "doc_id", "kind"], keep="first").sort(["bucket", "date", "doc_id"])
        frame = frame.with_columns(pl.int_range(pl.len()).over("bucket").alias("rank"))
        core = frame.filter(pl.col("kind") != BAND).drop("text")
        whole = core.filter(pl.col("kind") == WHOLE)
        # every member of a core bucket against every whole-text member (never trimmed with trimmed)
        pairs = core.join(whole, on="bucket", suffix="_w").filter(pl.col("doc_id") != pl.col("doc_id_w"))
        pairs = pairs.filter((pl.col("kind") == TRIMMED) | (pl.col("rank") > pl.col("rank_w")))
        # A trimmed core equal to a whole text: the whole text's shingles are all inside the longer one
        # (containment 1); their Jaccard is the ratio of shingle counts.
        shingle_count = lambda n: pl.max_horizontal(n - (size - 1), pl.lit(1))  # noqa: E731
        pairs = pairs.with_columns(
            (shingle_count(pl.col("words") - pl.col("trim")) / shingle_count(pl.col("words"))).alias("jaccard"))
        pairs = pairs.filter((pl.col("kind") == WHOLE) | (pl.col("jaccard") >= self.params.threshold))
        later_is_member = pl.col("rank") > pl.col("rank_w")
        core_pairs = pairs.select(
            pl.when(later_is_member).then(pl.col("doc_id")).otherwise(pl.col("doc_id_w")).alias("later"),
            pl.when(later_is_member).then(pl.col("doc_id_w")).otherwise(pl.col("doc_id")).alias("earlier"),
            pl.when(later_is_member).then(pl.col("date")).otherwise(pl.col("date_w")).alias("later_date"),
            pl.when(later_is_member).then(pl.col("date_w")).otherwise(pl.col("date")).alias("earlier_date"),
            pl.when(pl.col("kind") == WHOLE).then(pl.lit("exact_duplicate")).otherwise(pl.lit("near_duplicate"))
            .alias("kind"),
        )
        band = frame.filter(pl.col("kind") == BAND).with_columns(pl.len().over("bucket").alias("size"))
        small = band.filter((pl.col("size") > 1) & (pl.col("size") <= self.params.max_bucket))
        candidates = small.join(small.select("bucket", "doc_id", "rank", "date", "text"), on="bucket", suffix="_e") \
            .filter(pl.col("rank_e") < pl.col("rank")).unique(["doc_id", "doc_id_e"])
        band_pairs = self._verify(candidates, core_pairs.schema)
        skipped = band.filter(pl.col("size") > self.params.max_bucket).select("bucket").unique().height
        out = pl.concat([core_pairs, band_pairs]).unique(["later", "earlier", "kind"]).sort(["later", "earlier", "kind"])
        first_row = pl.int_range(pl.len()) == 0  # counters on one row, so that sums over partitions add up
        out = out.with_columns(pl.when(first_row).then(pl.lit(candidates.height)).cast(pl.Int64).alias("candidates"),
                               pl.when(first_row).then(pl.lit(skipped)).cast(pl.Int64).alias("skipped_buckets"))
        if out.height == 0:  # keep the counters even when nothing was found
            out = pl.DataFrame({"later": [None], "earlier": [None], "later_date": [None], "earlier_date": [None],
                                "kind": [None], "candidates": [candidates.height], "skipped_buckets": [skipped]},
                               schema=out.schema)
        return out.to_arrow().cast(REDUCED_SCHEMA)

    def _verify(self, candidates: pl.DataFrame, schema) -> pl.DataFrame:
        """Shingle Jaccard and containment of candidate pairs, vectorised: shared shingles by a join."""
        if candidates.height == 0:
            return pl.DataFrame(schema=schema)
        candidates = candidates.select("doc_id", "doc_id_e", "date", "date_e", "text", "text_e")
        texts = pl.concat([candidates.select("doc_id", "text"),
                           candidates.select(pl.col("doc_id_e").alias("doc_id"), pl.col("text_e").alias("text"))]) \
            .unique("doc_id").with_row_index("row")
        table = _shingle_table(texts["text"], self.params.shingle).join(
            texts.select("row", "doc_id"), on="row").select("doc_id", "hash")
        sizes = table.group_by("doc_id").agg(pl.len().alias("size"))
        shared = candidates.select("doc_id", "doc_id_e") \
            .join(table, on="doc_id").join(table.rename({"doc_id": "doc_id_e"}), on=["doc_id_e", "hash"]) \
            .group_by("doc_id", "doc_id_e").agg(pl.len().alias("shared"))
        scored = candidates.join(shared, on=["doc_id", "doc_id_e"]) \
            .join(sizes, on="doc_id").join(sizes.rename({"doc_id": "doc_id_e", "size": "size_e"}), on="doc_id_e") \
            .with_columns((pl.col("shared") / (pl.col("size") + pl.col("size_e") - pl.col("shared"))).alias("jaccard"),
                          (pl.col("shared") / pl.min_horizontal("size", "size_e")).alias("containment"))
        accepted = scored.filter((pl.col("jaccard") >= self.params.threshold)
                                 & (pl.col("containment") >= self.params.containment))
        return accepted.select(pl.col("doc_id").alias("later"), pl.col("doc_id_e").alias("earlier"),
                               pl.col("date").alias("later_date"), pl.col("date_e").alias("earlier_date"),
                               pl.lit("near_duplicate").alias("kind")).cast(schema)

    def finalize(self, reduced: pa.Table) -> dict:
        """Cluster verified pairs: every copy points to its cluster's earliest (published_at, doc_id)."""
        frame = pl.from_arrow(reduced)
        self.stats = {"candidates_verified": int(frame["candidates"].sum() or 0),
                      "skipped_template_buckets": int(frame["skipped_buckets"].sum() or 0)}
        frame = frame.drop_nulls("later")
        order = {}
        for doc_id, date in zip(frame["later"].to_list() + frame["earlier"].to_list(),
                                frame["later_date"].to_list() + frame["earlier_date"].to_list()):
            order[doc_id] = (date, doc_id)
        parent = {x: x for x in order}

        def root(x):
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        accepted = list(frame.select("later", "earlier", "kind").iter_rows())
        for a, b, _ in accepted:
            ra, rb = root(a), root(b)
            if ra != rb:
                first, second = sorted((ra, rb), key=order.__getitem__)
                parent[second] = first
        kind: dict[str, str] = {}
        for a, _, k in accepted:  # an exact match wins over a near one for the label
            kind[a] = "exact_duplicate" if "exact_duplicate" in (k, kind.get(a)) else k
        out = {}
        for x in order:
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
