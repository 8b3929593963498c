"""Evaluation on genuine fakes (`swapwatch eval --genuine DIR`): how recipes and checkpoints are chosen.

Each file is scored exactly as `swapwatch scan` scores it (swapwatch/stream/scan/scanner.py): an image's
score is its highest face score, a video's the mean over frames with a face of each frame's highest face
score. A file where no face is found (or that cannot be read) is *unscored*: it is left out of every
metric and listed with its reason.

The folder either has a `labels.tsv` (`filename label pair_group method`, label 1 = fake, `-` = no pair
group, method `real` for reals), or its files are named `<prefix>_real.<ext>` / `<prefix>_fake.<ext>`:
labels come from the suffix and a prefix with both sides is a pair group (method `DeepFaceLab` for
`dfl_*` files, else `unknown`, unless a method is given).

Metrics (all on scored files; every "share" counts a tie as half):
- `auc`: P(a fake scores above a real) over all (fake, real) combinations, i.e. the ROC AUC;
- pairs: within each pair group, every (fake, its real) comparison; `won` = the share the fake wins;
- per method: each method's fakes against ALL reals (an AUC per method, with its n);
- at each threshold of the model's sidecar (`score_calibration.thresholds`, on the raw score): TPR, FPR.

The metric functions take plain `ItemScore` rows, so they are tested on hand-made tables.
"""

from __future__ import annotations

import csv
import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from swapwatch.errors import ConfigError

log = logging.getLogger(__name__)

LABELS_FILE = "labels.tsv"
LABEL_COLUMNS = ("filename", "label", "pair_group", "method")
REAL_SUFFIX, FAKE_SUFFIX = "_real", "_fake"
TOP_FRAMES = 3  # video frames kept per item as "what drove the score"


@dataclass(frozen=True)
class GenuineItem:
    """One labelled file: `name` relative to the dataset root, `pair_group` None when it has none."""

    name: str
    label: int
    pair_group: str | None = None
    method: str = "unknown"
    path: Path | None = None


@dataclass
class ItemScore:
    """A file's scan outcome: `score` None = unscored (`reason` says why); `drivers` = which faces/frames."""

    item: GenuineItem
    score: float | None
    reason: str | None = None
    kind: str | None = None
    faces: int = 0
    drivers: dict[str, Any] = field(default_factory=dict)
    warning: str | None = None

    @property
    def scored(self) -> bool:
        return self.score is not None and math.isfinite(self.score)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "file": self.item.name,
            "label": self.item.label,
            "method": self.item.method,
            "pair_group": self.item.pair_group,
            "score": self.score,
            "kind": self.kind,
            "faces": self.faces,
        }
        if self.reason is not None:
            out["reason"] = self.reason
        if self.warning is not None:
            out["warning"] = self.warning
        if self.drivers:
            out["driver"] = describe_drivers(self.drivers)
            out["drivers"] = self.drivers
        return out


# --- labels -----------------------------------------------------------------------------------------

def read_labels(root: Path) -> list[GenuineItem]:
    """The items of `root/labels.tsv`; a malformed line raises ConfigError naming the file and line."""
    path = root / LABELS_FILE
    items: list[GenuineItem] = []
    seen: set[str] = set()
    with open(path, newline="") as f:
        rows = csv.reader(f, delimiter="\t")
        header = next(rows, None)
        if header is None or tuple(h.strip() for h in header[:4]) != LABEL_COLUMNS:
            raise ConfigError(f"{path}: the first line must be the header {' '.join(LABEL_COLUMNS)} (tab-separated)")
        for line, row in enumerate(rows, start=2):
            if not row or not "".join(row).strip():
                continue
            if len(row) < 4:
                raise ConfigError(f"{path}:{line}: expected 4 tab-separated columns, got {len(row)}")
            name, label, group, method = (c.strip() for c in row[:4])
            if label not in ("0", "1"):
                raise ConfigError(f"{path}:{line}: label must be 0 (real) or 1 (fake), got {label!r}")
            if name in seen:
                raise ConfigError(f"{path}:{line}: {name} is listed twice")
            seen.add(name)
            items.append(GenuineItem(
                name=name,
                label=int(label),
                pair_group=None if group in ("", "-") else group,
                method=method or ("real" if label == "0" else "unknown"),
                path=root / name,
            ))
    return items


def default_method(prefix: str) -> str:
    """Method of a fake in a folder without labels.tsv: the `dfl_*` pairs are DeepFaceLab's."""
    return "DeepFaceLab" if prefix.lower().startswith("dfl_") else "unknown"


def derive_labels(root: Path, method: str | None = None) -> list[GenuineItem]:
    """Items of a folder whose files end in `_real`/`_fake` (before the extension); others are skipped.

    A prefix present with both suffixes (in the same sub-folder) is a pair group; fakes get `method`,
    or `default_method(prefix)`; reals get `real`.
    """
    from swapwatch.media.files import media_files

    found: list[tuple[str, str, int]] = []  # (relative name, group key, label)
    for path in media_files(root):
        stem = path.stem
        lowered = stem.lower()
        if lowered.endswith(REAL_SUFFIX):
            label = 0
        elif lowered.endswith(FAKE_SUFFIX):
            label = 1
        else:
            log.info("genuine: %s has neither a _real nor a _fake suffix: skipped", path)
            continue
        rel = path.relative_to(root).as_posix()
        prefix = stem[: -len(REAL_SUFFIX)]
        group = (path.parent.relative_to(root) / prefix).as_posix()
        found.append((rel, group, label))
    sides: dict[str, set[int]] = defaultdict(set)
    for _, group, label in found:
        sides[group].add(label)
    items = []
    for rel, group, label in found:
        prefix = Path(group).name
        items.append(GenuineItem(
            name=rel,
            label=label,
            pair_group=group if sides[group] == {0, 1} else None,
            method="real" if label == 0 else (method or default_method(prefix)),
            path=root / rel,
        ))
    return items


def load_genuine(root: Path, method: str | None = None) -> tuple[list[GenuineItem], str]:
    """`root`'s items and where their labels came from (`labels.tsv` or `file names`)."""
    if not root.is_dir():
        raise ConfigError(f"--genuine {root}: no such folder")
    if (root / LABELS_FILE).is_file():
        items, source = read_labels(root), LABELS_FILE
        if method is not None:
            log.warning("genuine: %s has %s; its method column is used, not %r", root, LABELS_FILE, method)
    else:
        items, source = derive_labels(root, method), "file names (_real / _fake)"
    if not items:
        raise ConfigError(
            f"--genuine {root}: nothing to evaluate (no {LABELS_FILE}, and no media file named *_real / *_fake)"
        )
    return items, source


# --- scoring ----------------------------------------------------------------------------------------

def drivers(result: Mapping[str, Any], top: int = TOP_FRAMES) -> dict[str, Any]:
    """What drove a scan result's score: every face of an image (highest first), or a video's top frames
    (each with its highest face) and face tracks."""
    detail = result.get("detail") or []
    if result.get("kind") == "video":
        frames = sorted((d for d in detail if d.get("score") is not None), key=lambda d: -d["score"])[:top]
        tops = []
        for d in frames:
            i = int(np.argmax([f["score"] for f in d["faces"]]))
            face = d["faces"][i]
            tops.append({"frame": d["frame"], "score": d["score"], "face": i, "box": face.get("box"),
                         "track": face.get("track")})
        out: dict[str, Any] = {"frames": result.get("frames"), "frames_with_faces": result.get("frames_with_faces", 0),
                               "top_frames": tops}
        if result.get("tracks"):
            out["tracks"] = sorted(result["tracks"], key=lambda t: -t["mean"])
        return out
    faces = [{"face": i, "score": f["score"], "box": f.get("box")} for i, f in enumerate(detail)]
    return {"faces": sorted(faces, key=lambda f: -f["score"])} if faces else {}


def describe_drivers(d: Mapping[str, Any]) -> str:
    """One line for tables: which face (image) or frames and track (video) drove the score."""
    if "top_frames" in d:
        tops = d["top_frames"]
        if not tops:
            return ""
        first = tops[0]
        track = f", track {first['track']}" if first.get("track") is not None else ""
        return (f"frame {first['frame']} ({first['score']:.3f}{track}); "
                f"{d.get('frames_with_faces', 0)}/{d.get('frames', 0)} frames with a face")
    faces = d.get("faces") or []
    if not faces:
        return ""
    top = faces[0]
    box = top.get("box")
    where = f" at {','.join(str(round(v)) for v in box)}" if box else ""
    return f"face {top['face'] + 1}/{len(faces)}{where}"


def item_score(item: GenuineItem, result: Mapping[str, Any]) -> ItemScore:
    """An item's `ItemScore` from its `swapwatch scan` result dict."""
    score = result.get("score")
    return ItemScore(
        item=item,
        score=None if score is None else float(score),
        reason=result.get("reason") if score is None else None,
        kind=result.get("kind"),
        faces=int(result.get("faces") or 0),
        drivers=drivers(result) if score is not None else {},
        warning=result.get("warning"),
    )


def open_scanner(model: Path, **options: Any) -> Any:
    """The `swapwatch scan` Scanner for `model`: an .onnx as scan opens it (CPU ONNX Runtime, sidecar
    checked), anything else (.pt checkpoint, .plan, .ep) through `load_engine`'s auto backend.
    `options` are ScanSettings fields."""
    from swapwatch.stream.scan.scanner import Scanner

    options = {k: v for k, v in options.items() if v is not None}
    if model.suffix.lower() == ".onnx":
        return Scanner(model=model, **options)
    from swapwatch.engine.select import load_engine

    engine = load_engine(model, threads=int(options.get("threads", 1)))
    return Scanner(engine=engine, **options)


def score_items(
    items: Sequence[GenuineItem], scanner: Any, progress: Any = None,
    results: list[dict[str, Any]] | None = None,
) -> list[ItemScore]:
    """Scan every item's file with `scanner` (a Scanner); `results` collects the raw scan dicts."""
    paths = [it.path if it.path is not None else Path(it.name) for it in items]
    out = []
    for item, result in zip(items, scanner.scan_paths(paths, progress), strict=True):
        if results is not None:
            results.append(result)
        out.append(item_score(item, result))
    return out


# --- metrics ----------------------------------------------------------------------------------------

def win_share(fake_scores: Iterable[float], real_scores: Iterable[float]) -> float | None:
    """The share of (fake, real) combinations where the fake scores higher, a tie counting half (the ROC
    AUC, Mann-Whitney); None when either side is empty."""
    f = np.asarray(list(fake_scores), np.float64)
    r = np.asarray(list(real_scores), np.float64)
    if f.size == 0 or r.size == 0:
        return None
    diff = f[:, None] - r[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


def _split(rows: Iterable[ItemScore]) -> tuple[list[float], list[float]]:
    fakes: list[float] = []
    reals: list[float] = []
    for r in rows:
        if r.scored and r.score is not None:  # scored implies a score; the second test narrows its type
            (fakes if r.item.label == 1 else reals).append(float(r.score))
    return fakes, reals


@dataclass
class Overall:
    auc: float | None
    n: int
    n_fake: int
    n_real: int
    n_scored_fake: int
    n_scored_real: int
    n_unscored: int


def overall(rows: Sequence[ItemScore]) -> Overall:
    fakes, reals = _split(rows)
    n_fake = sum(r.item.label == 1 for r in rows)
    return Overall(
        auc=win_share(fakes, reals), n=len(rows), n_fake=n_fake, n_real=len(rows) - n_fake,
        n_scored_fake=len(fakes), n_scored_real=len(reals), n_unscored=sum(not r.scored for r in rows),
    )


@dataclass
class PairComparison:
    """One (fake, its same-scene real) comparison; `win` 1 / 0.5 (tie) / 0, None when either is unscored."""

    group: str
    fake: str
    real: str
    method: str
    fake_score: float | None
    real_score: float | None
    win: float | None


@dataclass
class PairSummary:
    won: float | None  # share of scored comparisons the fake won (ties half)
    wins: float  # sum of `win` over scored comparisons
    n: int  # scored comparisons
    n_unscored: int
    n_groups: int
    comparisons: list[PairComparison]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def pair_comparisons(rows: Sequence[ItemScore]) -> list[PairComparison]:
    """Every (fake, real) comparison inside each pair group, groups and files in sorted order."""
    groups: dict[str, list[ItemScore]] = defaultdict(list)
    for r in rows:
        if r.item.pair_group is not None:
            groups[r.item.pair_group].append(r)
    out = []
    for group in sorted(groups):
        members = sorted(groups[group], key=lambda r: r.item.name)
        for f in (m for m in members if m.item.label == 1):
            for r in (m for m in members if m.item.label == 0):
                win = None
                if f.scored and r.scored:
                    win = 1.0 if f.score > r.score else 0.5 if f.score == r.score else 0.0  # type: ignore[operator]
                out.append(PairComparison(group, f.item.name, r.item.name, f.item.method,
                                          f.score if f.scored else None, r.score if r.scored else None, win))
    return out


def pair_summary(rows: Sequence[ItemScore]) -> PairSummary:
    comps = pair_comparisons(rows)
    scored = [c.win for c in comps if c.win is not None]
    return PairSummary(
        won=float(np.mean(scored)) if scored else None,
        wins=float(sum(scored)),
        n=len(scored),
        n_unscored=len(comps) - len(scored),
        n_groups=len({c.group for c in comps}),
        comparisons=comps,
    )


@dataclass
class MethodResult:
    """A method's fakes against all reals: `auc` over the scored ones (None without both sides)."""

    method: str
    auc: float | None
    n_fake: int
    n_scored_fake: int
    n_real: int
    mean_score: float | None


def per_method(rows: Sequence[ItemScore]) -> list[MethodResult]:
    """One row per fake method (sorted by name), each against every scored real."""
    _, reals = _split(rows)
    by_method: dict[str, list[ItemScore]] = defaultdict(list)
    for r in rows:
        if r.item.label == 1:
            by_method[r.item.method].append(r)
    out = []
    for method in sorted(by_method, key=str.lower):
        fakes, _ = _split(by_method[method])
        out.append(MethodResult(
            method=method, auc=win_share(fakes, reals), n_fake=len(by_method[method]), n_scored_fake=len(fakes),
            n_real=len(reals), mean_score=float(np.mean(fakes)) if fakes else None,
        ))
    return out


def threshold_rates(rows: Sequence[ItemScore], thresholds: Mapping[str, float]) -> dict[str, dict[str, Any]]:
    """For each named threshold: the share of scored fakes (TPR) and reals (FPR) scoring at or above it."""
    fakes, reals = _split(rows)
    out = {}
    for name, t in thresholds.items():
        out[name] = {
            "threshold": float(t),
            "tpr": float(np.mean(np.asarray(fakes) >= t)) if fakes else None,
            "fpr": float(np.mean(np.asarray(reals) >= t)) if reals else None,
        }
    return out


def sorted_items(rows: Sequence[ItemScore]) -> list[ItemScore]:
    """Highest score first, unscored last (each part then by name)."""
    return sorted(rows, key=lambda r: (not r.scored, -(r.score or 0.0) if r.scored else 0.0, r.item.name))


@dataclass
class GenuineReport:
    overall: Overall
    pairs: PairSummary
    methods: list[MethodResult]
    at_thresholds: dict[str, dict[str, Any]]
    items: list[ItemScore]

    @property
    def unscored(self) -> list[ItemScore]:
        return [r for r in self.items if not r.scored]

    def to_dict(self) -> dict[str, Any]:
        return {
            "metrics": {**asdict(self.overall), "pairs_won": self.pairs.won, "pairs_n": self.pairs.n,
                        "at_thresholds": self.at_thresholds},
            "per_method": [asdict(m) for m in self.methods],
            "pairs": self.pairs.to_dict(),
            "items": [r.to_dict() for r in self.items],
            "unscored": [{"file": r.item.name, "label": r.item.label, "reason": r.reason} for r in self.unscored],
        }


def summarize(rows: Sequence[ItemScore], thresholds: Mapping[str, float] | None = None) -> GenuineReport:
    return GenuineReport(
        overall=overall(rows),
        pairs=pair_summary(rows),
        methods=per_method(rows),
        at_thresholds=threshold_rates(rows, thresholds or {}),
        items=sorted_items(rows),
    )


def curve_data(rows: Sequence[ItemScore]) -> tuple[list[int], list[float]]:
    """(labels, scores) of the scored items, for ROC plots."""
    scored = [r for r in rows if r.scored]
    return [r.item.label for r in scored], [float(r.score) for r in scored]  # type: ignore[arg-type]


def iter_lost_pairs(summary: PairSummary) -> Iterator[PairComparison]:
    """Comparisons the fake did not win outright (lost or tied), worst margin first."""
    lost = [c for c in summary.comparisons if c.win is not None and c.win < 1.0]
    yield from sorted(lost, key=lambda c: (c.fake_score or 0.0) - (c.real_score or 0.0))
