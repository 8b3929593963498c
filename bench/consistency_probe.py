"""A training-free probe of issue 9's hypothesis: are swapped faces inconsistent with their surroundings?

    python bench/consistency_probe.py                       # ../shared/data/genuine_dev, the reals' crop cache
    python bench/consistency_probe.py --k 16 --per-source 60 --out runs/bench-consistency

No training and no pseudo-fakes: for each canonical 256 px face crop, a frozen ImageNet EfficientNet-Lite0
(the offline wheel) gives the activations of one early block; per channel, the log ratio of their spread
inside the face (an ellipse over eyes, nose and mouth) to their spread outside it (hair, background,
neck) is a texture-consistency vector. Its distribution over real faces (`--per-source` crops of every
source in the training crop cache, so no source dominates) is fitted as a Gaussian (PCA to `--k`
dimensions, Ledoit-Wolf covariance), and a face's score is its Mahalanobis distance: an anomaly score in
both directions (inner face blurrier or cleaner than its context). Items are scored by the mean over
their crops (8 frames per video) and judged with the same metrics as `swapwatch eval` (AUC, pairs won,
AUC per method) on genuine_dev, which is only read, never fitted on.

Writes `summary.json` (and `items.json` with each file's score) into --out and prints the table.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".avi", ".webm"}


def region_masks(size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Inner face and outside-the-face masks on the canonical crop (template: eyes at y~121, mouth ~186)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) * (256.0 / size)
    inner = ((xx - 128) / 46) ** 2 + ((yy - 152) / 56) ** 2 <= 1
    outer = ((xx - 128) / 80) ** 2 + ((yy - 152) / 100) ** 2 > 1
    return inner, outer


class ConsistencyFeatures:
    """Log(spread inside / spread outside) per channel of one early block of EfficientNet-Lite0."""

    def __init__(self, block: int = 1) -> None:
        import torch

        from swapwatch.train.models.backbones import create_backbone

        backbone = create_backbone("efficientnet_lite0")
        self.torch = torch
        self.net = backbone.module.eval()
        self.mean = torch.tensor(backbone.mean).view(1, 3, 1, 1)
        self.std = torch.tensor(backbone.std).view(1, 3, 1, 1)
        self._act: Any = None
        self.net.blocks[block].register_forward_hook(lambda _m, _i, out: setattr(self, "_act", out.detach()))

    def __call__(self, crops_bgr: list[np.ndarray], batch: int = 32) -> np.ndarray:
        torch = self.torch
        out = []
        for i in range(0, len(crops_bgr), batch):
            x = torch.from_numpy(np.stack(crops_bgr[i : i + batch])[..., ::-1].copy()).permute(0, 3, 1, 2).float()
            with torch.no_grad():
                self.net((x / 255.0 - self.mean) / self.std)
            act = self._act
            inner, outer = (torch.from_numpy(m) for m in region_masks(act.shape[-1]))
            a, b = act[:, :, inner], act[:, :, outer]
            out.append(torch.log((a.std(-1) + 1e-3) / (b.std(-1) + 1e-3)).numpy())
        return np.concatenate(out)


def real_reference(cache: Path, per_source: int, seed: int) -> list[np.ndarray]:
    """`per_source` crops of every source in the training crop cache (real faces only)."""
    by_source: dict[str, list[dict[str, Any]]] = defaultdict(list)
    with (cache / "index.jsonl").open() as f:
        for line in f:
            rec = json.loads(line)
            if rec.get("label", 0) == 0:
                by_source[rec["source"]].append(rec)
    rng = random.Random(seed)
    chosen = [r for recs in by_source.values() for r in rng.sample(recs, min(per_source, len(recs)))]
    return [cv2.imread(str(cache / r["crop"])) for r in chosen]


def item_crops(path: Path, pipeline: Any, frames: int) -> list[np.ndarray]:
    from swapwatch.media.image import read_image
    from swapwatch.media.video import sample_video

    images = ([f for _, f in sample_video(path, frames)] if path.suffix.lower() in VIDEO_SUFFIXES
              else [read_image(path)])
    return [a.crop for img in images for a in pipeline.process(img)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--genuine", type=Path, default=DATA / "genuine_dev")
    p.add_argument("--cache", type=Path, default=REPO / ".cache" / "faces-reals",
                   help="the reals' aligned-crop cache (swapwatch train builds it)")
    p.add_argument("--per-source", type=int, default=60)
    p.add_argument("--k", type=int, default=24, help="PCA dimensions of the Gaussian")
    p.add_argument("--block", type=int, default=1)
    p.add_argument("--frames", type=int, default=8, help="frames sampled per video")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=REPO / "runs" / "bench-consistency")
    args = p.parse_args(argv)
    for need, what in ((args.genuine, "genuine_dev"), (args.cache / "index.jsonl", "the reals' crop cache")):
        if not need.exists():
            print(f"skipped: {what} not found at {need}", file=sys.stderr)
            return 0

    from sklearn.covariance import LedoitWolf
    from sklearn.decomposition import PCA

    from swapwatch.stream.faces import DetectorConfig, FacePipeline, load_detector
    from swapwatch.train.genuine import ItemScore, load_genuine, overall, pair_summary, per_method

    features = ConsistencyFeatures(args.block)
    reference = features(real_reference(args.cache, args.per_source, args.seed))
    pca = PCA(min(args.k, reference.shape[1]), random_state=args.seed).fit(reference)
    ref = pca.transform(reference)
    center, precision = ref.mean(0), LedoitWolf().fit(ref).precision_
    print(f"reference: {len(reference)} real crops, {reference.shape[1]} channels -> {ref.shape[1]} dims",
          file=sys.stderr)

    items, _ = load_genuine(args.genuine)
    pipeline = FacePipeline(load_detector(DetectorConfig()), size=256, margin=0.15, max_faces=1, keep="largest",
                            crop_size=256)
    rows = []
    for n, item in enumerate(items, 1):
        crops = item_crops(item.path or args.genuine / item.name, pipeline, args.frames)
        if not crops:
            rows.append(ItemScore(item, None, reason="no face found"))
            continue
        d = pca.transform(features(crops)) - center
        rows.append(ItemScore(item, float(np.einsum("ij,jk,ik->i", d, precision, d).mean()), faces=len(crops)))
        print(f"[{n}/{len(items)}] {item.name}: {rows[-1].score:.2f}", file=sys.stderr)

    total, pairs = overall(rows), pair_summary(rows)
    methods = {m.method: {"auc": m.auc, "n": m.n_fake} for m in per_method(rows)}
    summary = {"auc": total.auc, "pairs_won": pairs.wins, "pairs": pairs.n, "per_method": methods,
               "settings": {k: str(v) for k, v in vars(args).items()}, "reference_crops": len(reference)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    (args.out / "items.json").write_text(json.dumps([r.to_dict() for r in rows], indent=2))
    print(f"genuine_dev: AUC {total.auc:.3f}, fake above its own real in {pairs.wins:g} of {pairs.n} pairs")
    for method, m in sorted(methods.items(), key=lambda kv: -(kv[1]["auc"] or 0)):
        print(f"  {method:28s} n={m['n']:2d}  AUC {m['auc']:.2f}" if m["auc"] is not None else f"  {method}: -")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
