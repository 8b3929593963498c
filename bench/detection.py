"""Detection benchmark: how well a model finds genuine deepfakes, against the issue's targets.

    python bench/detection.py                                     # the shipped swapwatch/assets/default.onnx
    python bench/detection.py --model runs/x/model.onnx --out runs/bench-detection/x
    python bench/detection.py --checks genuine_dev pairs           # leave the demo out

Checks, each its own function returning a `CheckResult`, each run as a whole `swapwatch` process:
- `genuine_dev`: `swapwatch eval --genuine ../shared/data/genuine_dev` (106 files, 70 genuine fakes
  from 21 methods, 27 pair groups): AUC, pairs won, AUC per method;
- `pairs`: the same on `../shared/data/pairs` (4 DeepFaceLab fakes, each with its source frame);
- `demo`: `swapwatch demo --fast`, the offline demo clip (a face swapped at 4-8 s); records the
  report's `detected` and `false_alarm`;
- `held_out_reals`: `swapwatch watch --no-realtime` on every real video that the default recipe
  (configs/train/detect_cpu.yaml) held out for validation; a stream that reached alert is a false alarm.
To add one, write `check_NAME(ctx) ->
CheckResult` and add it to CHECKS; a target on its metrics goes into TARGETS.

Targets (from the issue), judged on genuine_dev: AUC >= 0.80; pairs won >= 85 % (its fake-vs-real pair
comparisons, ties half); AUC >= 0.70 for each of DeepFaceLab, FaceFusion, HifiFace and roop (inswapper)
(each method's fakes against all reals); no alert on any held-out real video. The pairs/ folder's share is
reported beside them.

Writes `summary.json` and `summary.md` into --out (and each check's own outputs in a sub-folder) and
prints the markdown. A check whose data folder is missing (../shared/data is not on every machine) is
skipped with the reason, and the script still exits 0; `--strict` exits 1 when a measured target fails.
Data stays where it is: nothing from ../shared/data is copied into --out except scores and file names.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
DEFAULT_MODEL = REPO / "swapwatch" / "assets" / "default.onnx"


@dataclass
class Context:
    model: Path
    data: Path
    out: Path


@dataclass
class CheckResult:
    name: str
    status: Literal["ok", "skipped", "failed"]
    reason: str | None = None
    wall_s: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    per_method: list[dict[str, Any]] = field(default_factory=list)
    report: str | None = None  # the check's own report file


@dataclass(frozen=True)
class Target:
    name: str
    check: str
    metric: Callable[[CheckResult], float | None]
    threshold: float


def _method_auc(method: str) -> Callable[[CheckResult], float | None]:
    def get(r: CheckResult) -> float | None:
        return next((m["auc"] for m in r.per_method if m["method"] == method), None)

    return get


TARGETS: tuple[Target, ...] = (
    Target("AUC >= 0.80", "genuine_dev", lambda r: r.metrics.get("auc"), 0.80),
    Target("pairs won >= 85 %", "genuine_dev", lambda r: r.metrics.get("pairs_won"), 0.85),
    *(Target(f"{m} AUC >= 0.70", "genuine_dev", _method_auc(m), 0.70)
      for m in ("DeepFaceLab", "FaceFusion", "HifiFace", "roop (inswapper)")),
    Target("no alert on held-out real videos", "held_out_reals",
           lambda r: 1.0 - r.metrics["false_alarm_share"] if r.metrics.get("videos") else None, 1.0),
)


# --- running ----------------------------------------------------------------------------------------

def swapwatch(args: list[str]) -> float:
    """Run `python -m swapwatch ARGS` to completion (no progress bar); wall seconds. Raises on failure."""
    env = {**os.environ, "SWAPWATCH_PROGRESS": "0"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "swapwatch", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout)[-2000:]
        raise RuntimeError(f"swapwatch {' '.join(args)} exited {proc.returncode}:\n{tail}")
    return wall


def genuine_check(ctx: Context, name: str, folder: Path) -> CheckResult:
    """`swapwatch eval --genuine FOLDER` as check `name`; skipped when the folder is missing."""
    if not folder.is_dir():
        return CheckResult(name, "skipped", f"{folder} not found (../shared/data is not on this machine)")
    out = ctx.out / name
    try:
        wall = swapwatch(["eval", "--model", str(ctx.model), "--genuine", str(folder), "--out", str(out)])
    except RuntimeError as err:
        return CheckResult(name, "failed", str(err))
    report = json.loads((out / "report.json").read_text())
    m = report["metrics"]
    pairs = report["pairs"]
    metrics = {
        "auc": m["auc"],
        "pairs_won": pairs["won"],
        "pair_wins": pairs["wins"],
        "pairs_n": pairs["n"],
        "n_fake": m["n_fake"],
        "n_real": m["n_real"],
        "n_unscored": m["n_unscored"],
        "at_thresholds": m["at_thresholds"],
    }
    return CheckResult(name, "ok", wall_s=round(wall, 1), metrics=metrics, per_method=report["per_method"],
                       report=str(out / "report.json"))


def check_genuine_dev(ctx: Context) -> CheckResult:
    return genuine_check(ctx, "genuine_dev", ctx.data / "genuine_dev")


def check_pairs(ctx: Context) -> CheckResult:
    return genuine_check(ctx, "pairs", ctx.data / "pairs")


def check_demo(ctx: Context) -> CheckResult:
    """`swapwatch demo --fast` with the model: did the swap get flagged, and did a real face raise a false alarm."""
    out = ctx.out / "demo"
    try:
        wall = swapwatch(["demo", "--fast", "--no-evidence", "--model", str(ctx.model), "--out", str(out)])
    except RuntimeError as err:
        return CheckResult("demo", "failed", str(err))
    report = json.loads((out / "report.json").read_text())
    metrics = {k: report.get(k) for k in ("detected", "false_alarm", "reached_during_swap",
                                          "first_suspicious_s", "first_alert_s")}
    return CheckResult("demo", "ok", wall_s=round(wall, 1), metrics=metrics, report=str(out / "report.json"))


def held_out_real_videos(recipe: Path) -> list[Path]:
    """The real videos a training recipe held out for validation (its `reals` sources' val split)."""
    from swapwatch.config import load_yaml, parse_config
    from swapwatch.train.config import TrainConfig
    from swapwatch.train.loop import items_for

    cfg = parse_config(TrainConfig, load_yaml(recipe), source=str(recipe))
    return sorted(i.path for i in items_for(cfg.data.sources) if i.split != "train" and i.kind == "video")


def check_held_out_reals(ctx: Context) -> CheckResult:
    """`swapwatch watch` (as fast as it decodes) on every real video the default recipe held out: a stream
    whose worst state reached alert is a false alarm, one that reached suspicious is counted beside it."""
    if not ctx.data.is_dir():
        return CheckResult("held_out_reals", "skipped", f"{ctx.data} not found (../shared/data is not on this machine)")
    videos = held_out_real_videos(REPO / "configs" / "train" / "detect_cpu.yaml")
    if not videos:
        return CheckResult("held_out_reals", "skipped", "the recipe holds out no real video")
    out = ctx.out / "held_out_reals"
    report_path = out / "watch.json"
    try:
        wall = swapwatch(["watch", *map(str, videos), "--no-realtime", "--no-console", "--model", str(ctx.model),
                          "--report", str(report_path)])
    except RuntimeError as err:
        return CheckResult("held_out_reals", "failed", str(err))
    streams = json.loads(report_path.read_text())["streams"]
    states = {name: s["worst_state"] for name, s in streams.items()}
    metrics = {
        "videos": len(states),
        "alerts": sorted(n for n, st in states.items() if st == "alert"),
        "suspicious": sorted(n for n, st in states.items() if st == "suspicious"),
        "failed": sorted(n for n, s in streams.items() if s.get("error")),
    }
    metrics["false_alarm_share"] = len(metrics["alerts"]) / max(1, len(states))
    return CheckResult("held_out_reals", "ok", wall_s=round(wall, 1), metrics=metrics, report=str(report_path))


CHECKS: dict[str, Callable[[Context], CheckResult]] = {
    "genuine_dev": check_genuine_dev,
    "pairs": check_pairs,
    "demo": check_demo,
    "held_out_reals": check_held_out_reals,
}


# --- summary ----------------------------------------------------------------------------------------

def judge(results: dict[str, CheckResult]) -> list[dict[str, Any]]:
    """Each target with its value and `passed` (None when its check did not run or the value is undefined)."""
    rows = []
    for t in TARGETS:
        r = results.get(t.check)
        value = t.metric(r) if r is not None and r.status == "ok" else None
        rows.append({"target": t.name, "check": t.check, "value": value, "threshold": t.threshold,
                     "passed": None if value is None else value >= t.threshold})
    return rows


def _f(v: Any, pct: bool = False) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{100 * v:.0f} %" if pct else f"{v:.3f}"
    return str(v)


def markdown(summary: dict[str, Any]) -> str:
    lines = [f"# Detection benchmark: `{summary['model']}`", "",
             "| check | status | AUC | pairs won | fakes / reals | unscored | time |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    demo = held = None
    for r in summary["checks"].values():
        m = r["metrics"]
        if r["status"] != "ok":
            lines.append(f"| {r['name']} | {r['status']}: {(r['reason'] or '').splitlines()[0]} | | | | | |")
        elif r["name"] == "demo":
            demo = r
            lines.append(f"| demo | ok | | | | | {r['wall_s']:.0f} s |")
        elif r["name"] == "held_out_reals":
            held = r
            lines.append(f"| held_out_reals | ok | | | 0 / {m['videos']} | {len(m['failed'])} | {r['wall_s']:.0f} s |")
        else:
            pairs = f"{m['pair_wins']:g}/{m['pairs_n']} ({_f(m['pairs_won'], pct=True)})" if m["pairs_n"] else "n/a"
            lines.append(f"| {r['name']} | ok | {_f(m['auc'])} | {pairs} | {m['n_fake']} / {m['n_real']} | "
                         f"{m['n_unscored']} | {r['wall_s']:.0f} s |")
    lines += ["", "## Targets", "", "| target | value | pass |", "| --- | ---: | --- |"]
    for t in summary["targets"]:
        value = _f(t["value"], pct="pairs" in t["target"])
        verdict = "not measured" if t["passed"] is None else "PASS" if t["passed"] else "fail"
        lines.append(f"| {t['target']} | {value} | {verdict} |")
    if held is not None:
        m = held["metrics"]
        lines += ["", "## Held-out real videos (`swapwatch watch`, the recipe's validation videos)", "",
                  f"{m['videos']} videos: alert on {len(m['alerts'])} ({', '.join(m['alerts']) or 'none'}), "
                  f"suspicious on {len(m['suspicious'])} ({', '.join(m['suspicious']) or 'none'})"]
    if demo is not None:
        m = demo["metrics"]
        lines += ["", "## Demo (`swapwatch demo --fast`: a face swapped at 4-8 s)", "",
                  f"detected: {_f(m['detected'])} (state reached during the swap: {m['reached_during_swap']}); "
                  f"false alarm on real faces: {_f(m['false_alarm'])}"]
    dev = summary["checks"].get("genuine_dev")
    if dev and dev["per_method"]:
        lines += ["", "## AUC per method (genuine_dev: the method's fakes against all reals)", "",
                  "| method | AUC | fakes | mean score |", "| --- | ---: | ---: | ---: |"]
        for m in dev["per_method"]:
            lines.append(f"| {m['method']} | {_f(m['auc'])} | {m['n_scored_fake']}/{m['n_fake']} | "
                         f"{_f(m['mean_score'])} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL,
                   help="model to judge (default: the shipped default.onnx)")
    p.add_argument("--data", type=Path, default=SHARED_DATA, help="the shared data folder (default ../shared/data)")
    p.add_argument("--out", type=Path, default=Path("runs/bench-detection"),
                   help="folder for the summary and each check's output")
    p.add_argument("--checks", nargs="+", choices=list(CHECKS), default=list(CHECKS),
                   help="checks to run (default all)")
    p.add_argument("--strict", action="store_true", help="exit 1 when a measured target fails")
    args = p.parse_args(argv)

    if not args.model.is_file():
        print(f"detection benchmark: no such model {args.model}", file=sys.stderr)
        return 2
    if not args.data.is_dir():
        print(f"detection benchmark: {args.data} not found (../shared/data is not on this machine): "
              "the genuine_dev and pairs checks are skipped", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    ctx = Context(model=args.model.resolve(), data=args.data, out=args.out.resolve())
    results: dict[str, CheckResult] = {}
    for name in args.checks:
        print(f"-- {name} ...", file=sys.stderr, flush=True)
        results[name] = r = CHECKS[name](ctx)
        note = f" ({r.wall_s:.0f} s)" if r.wall_s is not None else f": {r.reason}"
        print(f"   {r.status}{note}", file=sys.stderr, flush=True)
    summary = {
        "model": str(args.model),
        "data": str(args.data),
        "checks": {n: asdict(r) for n, r in results.items()},
        "targets": judge(results),
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    md = markdown(summary)
    (args.out / "summary.md").write_text(md)
    print(md)
    print(f"summary: {args.out / 'summary.json'}, {args.out / 'summary.md'}")
    if args.strict and any(t["passed"] is False for t in summary["targets"]):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
