"""A backtest from spec to report: score (incrementally), probe the effective cutoff, write report.md."""
from __future__ import annotations

import polars as pl

from backtests.spec import BacktestSpec, MethodSpec
from vintage.registry import Registry


def probe_cutoff(spec: BacktestSpec, registry: Registry) -> str | None:
    if spec.effective_cutoff in (None, "none"):
        return None
    if spec.effective_cutoff != "auto":
        registry.vintage_path(spec.effective_cutoff)  # a clear error if there is no such vintage
        return spec.effective_cutoff
    base = registry.root / "retrained"
    retrained = sorted(p.name for p in base.iterdir()) if base.exists() else []
    cutoffs = registry.cutoffs()
    return retrained[0] if retrained else cutoffs[(len(cutoffs) - 1) // 2]


def run_and_report(spec: BacktestSpec, engine: str = "ray") -> str:
    import time

    from backtests import storage
    from backtests.effective_cutoff import effective_cutoff
    from backtests.report import write_report
    from backtests.runner import run_backtest

    started = time.perf_counter()
    result = run_backtest(spec, engine=engine)
    registry = Registry(spec.registry)
    cutoff = probe_cutoff(spec, registry)
    curve = storage.join(spec.output, "effective_cutoff.parquet")
    if cutoff and (result.scored or not storage.exists(curve)):
        print(f"[backtest] effective-cutoff probe on vintage {cutoff}", flush=True)
        methods = list(spec.methods)  # plus the three reference curves where the spec lacks them
        keys = {m.key for m in methods}
        methods = [MethodSpec(name=n) for n in ("frontier", "surrogate", "retrained") if n not in keys] + methods
        curves = effective_cutoff(registry, cutoff, methods, frontier=spec.frontier,
                                  period=spec.effective_cutoff_period)
        storage.write_parquet(curves.with_columns(cutoff=pl.lit(cutoff)), curve)
    report = write_report(spec.output)
    print(f"[backtest] report {report} ({time.perf_counter() - started:.0f} s)", flush=True)
    return report
