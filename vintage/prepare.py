"""A run's inputs for the workers: the tokenizer, the split tokenised and packed into windows (held-out
documents marked), the fact probes as token ids, and facts about them (vocabulary, slice hashes)."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from corpora.files import documents_hash
from corpora.split import read_slices
from vintage.compact import corpus_vocabulary
from vintage.holdout import holdout_mask
from vintage.model_calls import pad_id
from vintage.train_config import TrainConfig, window_length


def prepare(config: TrainConfig, registry: Path) -> tuple[Path, dict]:
    """Tokenizer and tokenised documents for the workers; returns (tokens parquet, facts about them)."""
    from vintage.tokenizer import load_tokenizer, tokenizer_hash, train_bpe
    from vintage.windows import pack

    slices = read_slices(config.split)
    if slices.num_rows == 0:
        raise ValueError(f"{config.split}: the split has no documents")
    work = registry / ".work"
    work.mkdir(parents=True, exist_ok=True)
    if config.tokenizer:
        tokenizer = load_tokenizer(config.tokenizer)
    elif (registry / "tokenizer" / "tokenizer.json").exists():
        # a registry keeps its tokenizer as the corpus grows: its models stay comparable and a grown
        # chronological run can continue (delete the registry to train a new BPE)
        tokenizer = load_tokenizer(registry / "tokenizer")
        print(f"train: reusing the registry's tokenizer ({len(tokenizer)} tokens)", flush=True)
    else:
        tokenizer = train_bpe(slices["text"].to_pylist(), vocab_size=config.vocab_size)
    tokenizer.save_pretrained(registry / "tokenizer")
    eos = tokenizer.eos_token_id
    max_length = window_length(config)
    encoded = tokenizer(slices["text"].to_pylist(), add_special_tokens=False)["input_ids"]
    holdout = holdout_mask(slices["doc_id"].to_pylist(), config.holdout_every).to_pylist()
    streams: dict[tuple[str, bool], list[list[int]]] = {}  # (slice, held out) -> its documents, in split order
    for s, held, ids in zip(slices["slice"].to_pylist(), holdout, encoded):
        streams.setdefault((s, held), []).append(ids)
    rows = {"slice": [], "input_ids": [], "holdout": []}
    per_slice = {}
    for (s, held), docs in sorted(streams.items()):
        windows = pack(docs, max_length, eos)
        rows["slice"] += [s] * len(windows)
        rows["input_ids"] += windows
        rows["holdout"] += [held] * len(windows)
        entry = per_slice.setdefault(s, {"documents": 0, "tokens": 0, "windows": 0, "window_tokens": 0,
                                         "heldout_documents": 0})
        entry["heldout_documents" if held else "documents"] += len(docs)
        if not held:  # tokens: the trained documents' own; window_tokens: what training reads (with the EOS)
            entry["tokens"] += sum(len(d) for d in docs)
            entry["windows"] += len(windows)
            entry["window_tokens"] += sum(len(w) for w in windows)
    table = pa.table({"slice": pa.array(rows["slice"], pa.string()),
                      "input_ids": pa.array(rows["input_ids"], pa.list_(pa.int32())), "holdout": rows["holdout"]})
    tokens = work / "tokens.parquet"
    pq.write_table(table, tokens)
    slice_hash = {}
    for s in sorted(per_slice):
        part = slices.filter(pa.compute.equal(slices["slice"], s))
        slice_hash[s] = documents_hash(part["doc_id"].to_pylist(), part["text"].to_pylist())
    probes = work / "probes.json"
    probe_rows = _encode_probes(config.probes, tokenizer) if config.probes else []
    probes.write_text(json.dumps(probe_rows))
    # every id a model of the run reads or is asked about: the documents (held out included), the probes, the
    # specials; the surrogates may train over these alone (vintage/compact.py)
    probe_ids = [ids for p in probe_rows for ids in (p["prompt"], *p["choices"])]
    used = corpus_vocabulary([*encoded, *probe_ids], len(tokenizer),
                             always=(eos, tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.unk_token_id))
    facts = {"tokenizer_hash": tokenizer_hash(tokenizer), "probes": str(probes), "vocab_size": len(tokenizer), "eos_id": eos,
             "pad_id": pad_id(tokenizer),
             "window": max_length, "used_ids": list(used.ids),
             "slices": {s: {**entry, "content_hash": slice_hash[s]} for s, entry in sorted(per_slice.items())}}
    return tokens, facts


def _encode_probes(path: str, tokenizer) -> list[dict]:
    """Fact queries as token ids with the instant they became public (their as_of, microseconds UTC)."""
    import pyarrow.compute as pc

    table = pq.read_table(path)
    if "kind" in table.column_names:
        table = table.filter(pc.equal(table["kind"], "fact"))
    rows = []
    for q in table.select(["as_of", "prompt", "choices", "answer"]).to_pylist():
        choices = list(q["choices"])
        if q["answer"] not in choices:
            raise ValueError(f"{path}: query {q['prompt']!r}: answer {q['answer']!r} is not one of {choices}")
        rows.append({"known_at": q["as_of"].isoformat(), "prompt": tokenizer(q["prompt"], add_special_tokens=False)["input_ids"],
                     "choices": [tokenizer(c, add_special_tokens=False)["input_ids"] for c in choices],
                     "answer": choices.index(q["answer"])})
    return rows
