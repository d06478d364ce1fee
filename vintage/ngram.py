"""N-gram vintage surrogates: counts per slice (additive), a vintage = the sum of its slices' counts.

    vintage ngram --registry out/demo/models --split out/demo/split/synthetic-market --order 5

Counting runs on Ray Data: documents are tokenised with the registry's (the frontier's) tokenizer in
`map_batches`, every k-gram (k = 1..order) is emitted and the counts are summed with `groupby`. Each slice's
counts are one parquet file, `ngram/slices/<cutoff>.parquet` (order, context, token, count), so a vintage at
cutoff t is exactly the sum of the files <= t: no training, and a new period is one more file.

Smoothing: interpolated Kneser-Ney with one absolute discount per order, D_k = n1 / (n1 + 2 n2) (Ney,
Essen & Kneser 1994; Chen & Goodman 1999 found interpolated KN the best of the classic schemes). Lower
orders use continuation counts (how many distinct tokens precede a k-gram), which is what makes the backoff
distribution right for *unseen* contexts, and the recursion ends in the uniform distribution over the
tokens the corpus uses (its support, shared by every vintage, so that a token new after a cutoff still has the
vintage's small log-prob and the contrast pushes it down), so each of them has a finite log-prob. Over a
frontier-sized vocabulary (vintage/compact.py's `worth_compacting`) the ids outside the support get -inf, as a
compact neural surrogate's do: the modes keep the frontier's own log-prob there; over a small BPE the support is
the whole vocabulary. (A grown corpus can grow the support, and with it every vintage's floor: the
fingerprints follow.) (Modified KN's three discounts per order gain a little perplexity for a third more
statistics; at these corpus sizes the simpler scheme is enough.)

`NgramLM` answers like a Hugging Face causal LM (`model(input_ids, attention_mask, ..., past_key_values)`
returns `.logits` = log-probs over the vocabulary), so `PointInTimeLM` uses it unchanged as a surrogate.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from corpora.files import atomic_path, documents_hash, short_hash, write_text_atomically
from corpora.quiet_ray_data import QuietRayData
from vintage.compact import expand_logits
from vintage.holdout import HOLDOUT_EVERY

COUNT_SCHEMA = pa.schema([("order", pa.int8()), ("context", pa.string()), ("token", pa.int32()),
                          ("count", pa.int64())])
BOS = -1  # virtual start-of-document token: left context of a document's first tokens (never predicted)


def context_key(ids) -> str:
    return " ".join(str(int(i)) for i in ids)


def emit_ngrams(sequences, order: int) -> pa.Table:
    """Counts of every k-gram (k = 1..order) of the token sequences, aggregated; documents are padded with
    order-1 virtual BOS tokens on the left (so a document's first tokens have a left context) and never
    predict across a document boundary."""
    orders, contexts, tokens = [], [], []
    for seq in sequences:
        padded = [BOS] * (order - 1) + [int(t) for t in seq]
        for i in range(order - 1, len(padded)):
            for k in range(1, order + 1):
                ctx = padded[i - k + 1: i]
                if len(ctx) >= 2 and ctx[1] == BOS:
                    break  # two or more BOS: a context no query ever has, and no lower order needs
                orders.append(k)
                contexts.append(context_key(ctx))
                tokens.append(padded[i])
    table = pa.table({"order": pa.array(orders, pa.int8()), "context": pa.array(contexts, pa.string()),
                      "token": pa.array(tokens, pa.int32()), "count": pa.array(np.ones(len(tokens), np.int64))})
    return sum_counts(table)


def sum_counts(table: pa.Table) -> pa.Table:
    """Rows with the same (order, context, token) summed; sorted, so equal counts give equal tables."""
    if table.num_rows == 0:
        return COUNT_SCHEMA.empty_table()
    grouped = table.group_by(["order", "context", "token"]).aggregate([("count", "sum")])
    grouped = grouped.rename_columns({"count_sum": "count"}).select(COUNT_SCHEMA.names).cast(COUNT_SCHEMA)
    return grouped.sort_by([("order", "ascending"), ("context", "ascending"), ("token", "ascending")])


class _CountBatch:
    """Texts of one block → its aggregated k-gram counts per slice (the tokenizer loaded once per block)."""

    def __init__(self, tokenizer_dir: str, order: int, eos_id: int | None):
        from vintage.tokenizer import load_tokenizer

        self.tokenizer = load_tokenizer(tokenizer_dir)
        self.order, self.eos_id = order, eos_id

    def __call__(self, batch: pa.Table) -> pa.Table:
        parts = []
        for name in pc.unique(batch["slice"]).to_pylist():
            texts = batch.filter(pc.equal(batch["slice"], name))["text"].to_pylist()
            ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
            if self.eos_id is not None:
                ids = [seq + [self.eos_id] for seq in ids]
            counts = emit_ngrams(ids, self.order)
            parts.append(counts.append_column("slice", pa.array([name] * counts.num_rows, pa.string())))
        return pa.concat_tables(parts) if parts else COUNT_SCHEMA.append(pa.field("slice", pa.string())).empty_table()


def _count_block(batch: pa.Table, tokenizer_dir: str, order: int, eos_id: int | None) -> pa.Table:
    return _CountBatch(tokenizer_dir, order, eos_id)(batch)


@dataclass
class NgramBuild:
    seconds: float
    counted: list[str]  # slices counted by this call
    skipped: list[str]  # slices whose counts were already there
    manifest: dict


def count_slices(registry_dir: str | Path, split_dir: str | Path, order: int = 5, holdout_every: int = HOLDOUT_EVERY,
                 engine: str = "ray", batch_size: int = 64, min_count: int = 1) -> NgramBuild:
    """Count k-grams of every slice of the split into `registry/ngram/slices/`, skipping slices whose
    counts exist for the same content, tokenizer and order (a grown corpus counts only its new slices).
    Held-out documents (`is_holdout`, as in training) are left out, so perplexity on them stays honest."""
    from corpora.split import read_slices
    from vintage.holdout import holdout_mask
    from vintage.tokenizer import load_tokenizer, tokenizer_hash

    if not 2 <= order <= 6:
        raise ValueError(f"n-gram order must be in 2..6, got {order}")
    started = time.perf_counter()
    registry_dir = Path(registry_dir)
    tokenizer_dir = registry_dir / "tokenizer"
    if not tokenizer_dir.exists():
        raise FileNotFoundError(f"{registry_dir}: no tokenizer/ (train the registry first, or copy the "
                                f"frontier's tokenizer there)")
    tokenizer = load_tokenizer(tokenizer_dir)
    tok_hash = tokenizer_hash(tokenizer)
    out = registry_dir / "ngram"
    (out / "slices").mkdir(parents=True, exist_ok=True)
    manifest_path = out / "manifest.json"
    old = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    if old.get("order") != order or old.get("tokenizer_hash") != tok_hash or old.get("holdout_every") != holdout_every:
        old = {}  # other settings: every slice is recounted
    documents = read_slices(split_dir)
    keep = pc.invert(holdout_mask(documents["doc_id"].to_pylist(), holdout_every))
    documents = documents.filter(keep).select(["slice", "doc_id", "text"])
    slices = sorted(pc.unique(documents["slice"]).to_pylist())
    hashes = {}
    for name in slices:
        part = documents.filter(pc.equal(documents["slice"], name))
        hashes[name] = documents_hash(part["doc_id"].to_pylist(), part["text"].to_pylist())
    known = old.get("slices", {})
    todo = [s for s in slices if known.get(s, {}).get("content_hash") != hashes[s]
            or not (out / "slices" / f"{s}.parquet").exists()]
    todo_docs = documents.filter(pc.is_in(documents["slice"], pa.array(todo, pa.string()))) if todo else None
    eos = tokenizer.eos_token_id
    if todo_docs is not None and todo_docs.num_rows:
        print(f"[ngram] counting {order}-grams of {todo_docs.num_rows} documents in {len(todo)} slice(s) "
              f"({engine})", flush=True)
        if engine == "ray":
            import ray

            # blocks cut here (a Ray Data repartition of a small table costs more than the counting), counted
            # by tasks (each worker loads the tokenizer once per block), summed across blocks by groupby
            chunks = [todo_docs.slice(i, batch_size) for i in range(0, todo_docs.num_rows, batch_size)]
            with QuietRayData(enable_progress_bars=False):  # our [ngram] line, not Ray Data's INFO logs
                counted = ray.data.from_arrow(chunks).map_batches(_count_block, fn_args=(str(tokenizer_dir), order,
                                                                                         eos),
                                                                  batch_size=None, batch_format="pyarrow")
                summed = counted.groupby(["slice", "order", "context", "token"],
                                         num_partitions=max(1, min(4, len(chunks)))).sum("count")
                table = pa.concat_tables(ray.get(summed.to_arrow_refs()))
            table = table.rename_columns({"sum(count)": "count"} if "sum(count)" in table.column_names else {})
        else:
            table = _CountBatch(str(tokenizer_dir), order, eos)(todo_docs)
    else:
        table = None
    entries = {s: known[s] for s in slices if s not in todo and s in known}
    for name in todo:
        part = sum_counts(table.filter(pc.equal(table["slice"], name)).select(COUNT_SCHEMA.names)) \
            if table is not None else COUNT_SCHEMA.empty_table()
        target = out / "slices" / f"{name}.parquet"
        with atomic_path(target) as tmp:
            pq.write_table(part, tmp)
        entries[name] = {"content_hash": hashes[name], "ngrams": part.num_rows,
                         "tokens": int(pc.sum(part.filter(pc.equal(part["order"], 1))["count"]).as_py() or 0),
                         "bytes": target.stat().st_size}
    for stale in (out / "slices").glob("*.parquet"):
        if stale.stem not in slices:
            stale.unlink()
    support = corpus_support(out, slices, len(tokenizer))
    manifest = {"order": order, "min_count": min_count, "tokenizer_hash": tok_hash, "holdout_every": holdout_every,
                "vocab_size": len(tokenizer), "smoothing": "interpolated Kneser-Ney, D_k = n1/(n1+2 n2)",
                **({"support": support} if support is not None else {}),
                "slices": dict(sorted(entries.items())),
                "seconds": round(time.perf_counter() - started, 2)}
    write_text_atomically(manifest_path, json.dumps(manifest, indent=2) + "\n")
    print(f"[ngram] {len(todo)} slice(s) counted, {len(slices) - len(todo)} already there; "
          f"{sum(e['bytes'] for e in entries.values()) / 1e6:.2f} MB on disk in {manifest['seconds']:.1f} s",
          flush=True)
    return NgramBuild(manifest["seconds"], todo, [s for s in slices if s not in todo], manifest)


def corpus_support(ngram_dir: Path, slices: list[str], vocab_size: int) -> list[int] | None:
    """The token ids every slice's counts use (the smoothing's base, vintage by vintage the same), when a
    compact vocabulary pays (vintage/compact.py: at most half the vocabulary); else None, the whole vocabulary."""
    from vintage.compact import CompactVocabulary, worth_compacting

    used: set[int] = set()
    for name in slices:
        unigrams = pq.read_table(ngram_dir / "slices" / f"{name}.parquet", columns=["order", "token"])
        used.update(unigrams.filter(pc.equal(unigrams["order"], 1))["token"].to_pylist())
    compact = CompactVocabulary(tuple(sorted(t for t in used if 0 <= t < vocab_size)), vocab_size)
    return list(compact.ids) if worth_compacting("auto", compact) else None


def vintage_counts(ngram_dir: str | Path, cutoff: str) -> pa.Table:
    """The counts of vintage `cutoff`: the sum of every slice's counts up to and including it."""
    ngram_dir = Path(ngram_dir)
    files = sorted(p for p in (ngram_dir / "slices").glob("*.parquet") if p.stem <= cutoff)
    if not files:
        raise FileNotFoundError(f"{ngram_dir}: no n-gram slice counts at or before {cutoff}")
    return sum_counts(pa.concat_tables([pq.read_table(f) for f in files]))


def ngram_fingerprint(ngram_dir: str | Path, cutoff: str, min_count: int | None = None) -> str:
    """What an n-gram vintage is: order, tokenizer, pruning and the content of the slices it sums."""
    manifest = json.loads((Path(ngram_dir) / "manifest.json").read_text())
    min_count = manifest.get("min_count", 1) if min_count is None else min_count
    parts = {s: e["content_hash"] for s, e in manifest["slices"].items() if s <= cutoff}
    identity = [manifest["order"], manifest["tokenizer_hash"], min_count, parts]
    if "support" in manifest:  # counts over a whole vocabulary keep the fingerprints they had
        identity.append(len(manifest["support"]))
    return short_hash(json.dumps(identity, sort_keys=True))


class _Order:
    """One order's smoothed statistics: per context, its tokens and discounted counts."""

    def __init__(self, counts: pa.Table, discount: float):
        self.discount = discount
        contexts = counts["context"].to_numpy(zero_copy_only=False)
        self.tokens = counts["token"].to_numpy().astype(np.int64)
        values = counts["count"].to_numpy().astype(np.float64)
        self.adjusted = np.maximum(values - discount, 0.0)
        starts = np.flatnonzero(np.r_[True, contexts[1:] != contexts[:-1]]) if len(contexts) else np.array([], int)
        ends = np.r_[starts[1:], len(contexts)]
        totals = np.add.reduceat(values, starts) if len(values) else np.array([])
        self.index = {contexts[s]: (s, e, t, e - s) for s, e, t in zip(starts, ends, totals)}


class NgramLM(torch.nn.Module):
    """A smoothed n-gram model over the frontier's vocabulary that answers like a HF causal LM.

    `forward` returns `.logits` = log-probs [batch, length, vocab] (float32) and a cache holding the tokens
    seen, so incremental calls with one new token per step work as with a transformer's KV cache.
    """

    def __init__(self, counts: pa.Table, vocab_size: int, order: int, min_count: int = 1,
                 support: list[int] | None = None):
        """`support`: the token ids the distribution spreads over (ascending; None: the whole vocabulary); the
        others get log-prob -inf."""
        super().__init__()
        self.order, self.vocab_size, self.min_count = order, vocab_size, min_count
        self.config = SimpleNamespace(vocab_size=vocab_size)
        self.support = None if support is None else torch.tensor(support, dtype=torch.long)
        self.size = vocab_size if support is None else len(support)  # the distribution's length
        # token id -> its index in the distribution (-1: outside the support)
        self.position = np.arange(vocab_size) if support is None else np.full(vocab_size, -1, dtype=np.int64)
        if support is not None:
            self.position[np.asarray(support, dtype=np.int64)] = np.arange(len(support))
        counts = counts.filter(pc.less(counts["token"], vocab_size))
        if support is not None:
            counts = counts.filter(pc.is_in(counts["token"], pa.array(support, pa.int32())))
        self.levels: dict[int, _Order] = {}
        self.discounts: dict[int, float] = {}
        for k in range(1, order + 1):
            if k == order:
                level = counts.filter(pc.equal(counts["order"], k)).select(["context", "token", "count"])
            else:  # continuation counts: distinct left neighbours of each k-gram, from the (k+1)-grams
                above = counts.filter(pc.equal(counts["order"], k + 1))
                suffix = pc.replace_substring_regex(above["context"], pattern=r"^[^ ]+ ?", replacement="",
                                                    max_replacements=1)  # drop the leftmost token
                level = pa.table({"context": suffix, "token": above["token"]}).group_by(["context", "token"]) \
                    .aggregate([("token", "count")]).rename_columns(["context", "token", "count"])
                level = level.set_column(2, "count", pc.cast(level["count"], pa.int64()))
            n1 = pc.sum(pc.equal(level["count"], 1)).as_py() or 0
            n2 = pc.sum(pc.equal(level["count"], 2)).as_py() or 0
            discount = n1 / (n1 + 2 * n2) if n1 + n2 else 0.5
            discount = min(max(discount, 0.05), 0.95)
            if min_count > 1 and k > 1:
                level = level.filter(pc.greater_equal(level["count"], min_count))
            level = level.sort_by([("context", "ascending"), ("token", "ascending")])
            self.levels[k] = _Order(level, discount)
            self.discounts[k] = discount
        self.rows = sum(len(level.tokens) for level in self.levels.values())

    @classmethod
    def from_registry(cls, registry, cutoff: str, min_count: int | None = None) -> "NgramLM":
        """The vintage at `cutoff` (the sum of its slices' counts), pruned by `min_count` (default: the
        registry's n-gram setting)."""
        from vintage.registry import Registry

        registry = registry if isinstance(registry, Registry) else Registry(registry)
        directory = registry.root / "ngram"
        if not (directory / "manifest.json").exists():
            raise FileNotFoundError(f"{registry.root}: no n-gram counts (run `vintage ngram --registry "
                                    f"{registry.root} --split SPLIT`)")
        manifest = json.loads((directory / "manifest.json").read_text())
        if manifest["tokenizer_hash"] != registry.manifest.get("tokenizer_hash", manifest["tokenizer_hash"]):
            raise ValueError(f"{directory}: counted with tokenizer {manifest['tokenizer_hash']}, the registry's "
                             f"is {registry.manifest.get('tokenizer_hash')}; recount")
        min_count = manifest.get("min_count", 1) if min_count is None else min_count
        return cls(vintage_counts(directory, cutoff), manifest["vocab_size"], manifest["order"], min_count,
                   manifest.get("support"))

    def memory_bytes(self) -> int:
        return sum(level.tokens.nbytes + level.adjusted.nbytes for level in self.levels.values()) \
            + sum(len(level.index) for level in self.levels.values()) * 200  # dict entry + key, roughly

    # -- probabilities -----------------------------------------------------------------------------------

    def distribution(self, context: list[int]) -> np.ndarray:
        """P(· | context) over the support (float64, sums to one): interpolated KN."""
        p = np.full(self.size, 1.0 / self.size)
        context = context[-(self.order - 1):] if self.order > 1 else []
        for k in range(1, min(len(context) + 1, self.order) + 1):
            key = context_key(context[len(context) - (k - 1):]) if k > 1 else ""
            level = self.levels[k]
            found = level.index.get(key)
            if found is None:
                continue  # unseen context: this order adds nothing, the lower one stands
            start, end, total, types = found
            p *= level.discount * types / total
            p[self.position[level.tokens[start:end]]] += level.adjusted[start:end] / total  # unique per context
        return p

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=True,
                logits_to_keep: int | None = None, **_):
        """Log-probs of the next token at every position (or the last `logits_to_keep`)."""
        ids = input_ids.cpu()
        mask = torch.ones_like(ids) if attention_mask is None else attention_mask.cpu()
        if past_key_values is not None:  # the tokens seen so far, with their mask
            past_ids, past_mask = past_key_values
            if attention_mask is not None and attention_mask.shape[1] == past_ids.shape[1] + ids.shape[1]:
                mask = attention_mask.cpu()[:, -ids.shape[1]:]
            ids, mask = torch.cat([past_ids, ids], 1), torch.cat([past_mask, mask], 1)
        new = input_ids.shape[1]
        keep = new if logits_to_keep in (None, 0) else min(logits_to_keep, new)
        out = torch.zeros(ids.shape[0], keep, self.size, dtype=torch.float32)
        memo: dict[tuple, torch.Tensor] = {}
        for row in range(ids.shape[0]):
            valid = mask[row].bool()
            tokens = ids[row].tolist()
            seen = []  # the row's unmasked tokens so far
            first = ids.shape[1] - keep
            for position, (token, ok) in enumerate(zip(tokens, valid.tolist())):
                if ok:
                    seen.append(token)
                if position < first:
                    continue
                key = tuple(seen[-(self.order - 1):]) if self.order > 1 else ()
                if key not in memo:
                    memo[key] = torch.from_numpy(np.log(self.distribution(list(key)))).float()
                out[row, position - first] = memo[key]
        if self.support is not None:
            out = expand_logits(out, self.support, self.vocab_size)
        return SimpleNamespace(logits=out.to(input_ids.device), past_key_values=(ids, mask))
