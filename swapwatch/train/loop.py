"""The training loop: data from the crop cache, a MASM or AIRL detector, checkpoints, resume, reports.

Outputs in `output_dir/name/`: checkpoints/last.pt (every `checkpoint_every` steps and on interrupt),
checkpoints/best.pt (best validation AUC), metrics.json, loss.png, roc.png, config.yaml.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch.utils.data import DataLoader, WeightedRandomSampler

from swapwatch.errors import SwapwatchError
from swapwatch.media.image import read_image
from swapwatch.train.config import CacheSettings, SamplesSource, TrainConfig
from swapwatch.train.data import read_dataset
from swapwatch.train.data.cache import CropRecord, build_face_cache, load_face_cache
from swapwatch.train.data.items import MediaItem
from swapwatch.train.dataset import TrainFaces, TrainPairs, ValFaces, source_weights, split_by_video
from swapwatch.train.metrics import compute_metrics
from swapwatch.train.models import build_model, parse_model_config
from swapwatch.train.models.base import Detector
from swapwatch.train.plots import plot_loss_curves, plot_roc
from swapwatch.train.pseudofakes.restorer_net import ensure_restorer
from swapwatch.train.samples_data import sample_items

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    best_auc: float | None
    last_checkpoint: Path
    best_checkpoint: Path | None


def pick_device(cfg: TrainConfig) -> torch.device:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise SwapwatchError("device: cuda was requested but CUDA is not available")
    if cfg.device in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def items_for(sources: list[Any]) -> list[MediaItem]:
    items: list[MediaItem] = []
    for src in sources:
        items.extend(sample_items(src.split) if isinstance(src, SamplesSource) else read_dataset(src))
    return items


def cached_records(items: list[MediaItem], c: CacheSettings) -> list[CropRecord]:
    report = build_face_cache(items, c, progress=True)
    log.info("face cache %s: %s", c.root, report)
    wanted = {str(Path(i.path).resolve()) for i in items}
    split_of = {str(Path(i.path).resolve()): i.split for i in items}
    records = [r for r in load_face_cache(c.root) if str(Path(r.source_path).resolve()) in wanted]
    for r in records:  # the split comes from this run's reading of the dataset, not from the cache
        r.split = split_of[str(Path(r.source_path).resolve())]
    if not records:
        raise SwapwatchError(f"no face crops for the configured sources in cache {c.root}")
    return records


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: an interrupted save never corrupts the previous checkpoint


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise SwapwatchError(f"{path}: not a readable swapwatch checkpoint ({type(err).__name__}: {err})") from None


def model_from_checkpoint(path: Path) -> tuple[Detector, dict[str, Any]]:
    state = load_checkpoint(path)
    if not isinstance(state, dict) or "model_config" not in state or "model" not in state:
        raise SwapwatchError(f"{path}: not a swapwatch checkpoint (missing model_config/model)")
    model = build_model(parse_model_config(state["model_config"], source=str(path)))
    model.load_state_dict(state["model"])
    model.eval()
    return model, state


@torch.no_grad()
def score_loader(model: Detector, loader: DataLoader, device: torch.device) -> np.ndarray:
    model.eval()
    out = []
    for x, _, _ in loader:
        out.append(torch.sigmoid(model(x.to(device)).logit.float()).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def lr_lambda(warmup: int, total: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


class _Stop(Exception):
    pass


def train(cfg: TrainConfig, resume: bool = True) -> TrainResult:
    run_dir = cfg.run_dir
    ckpt_dir = run_dir / "checkpoints"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(json.loads(cfg.model_dump_json()), sort_keys=False))
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg)
    use_amp = cfg.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16

    records = cached_records(items_for(cfg.data.sources), cfg.data.cache)
    if cfg.data.val_sources:
        train_recs, val_recs = records, cached_records(items_for(cfg.data.val_sources), cfg.data.cache)
    else:
        train_recs, val_recs = split_by_video(records, cfg.data.val_fraction, cfg.seed)
    if not val_recs:
        log.warning("no held-out videos (too few sources for val_fraction); validating on training crops")
        val_recs = train_recs
    log.info("crops: %d train, %d val", len(train_recs), len(val_recs))
    pf = cfg.data.pseudo_fakes
    if pf is not None and pf.mix.get("restored", 0.0) > 0:
        ensure_restorer(pf.restored, [r.crop for r in train_recs], read_image, cfg.seed)

    model = build_model(cfg.model).to(device)
    if getattr(model, "pretrained", True) is False:
        log.warning("model backbone is random-init: fine for smoke runs, never ship it as a detector")
    dataset_type = TrainPairs if cfg.data.paired else TrainFaces
    train_ds = dataset_type(train_recs, cfg.data, model.input_size, model.mean, model.std, cfg.seed)
    val_recs = val_recs[: cfg.max_val_items]
    val_ds = ValFaces(val_recs, cfg.data, model.input_size, model.mean, model.std, cfg.seed)
    loader_kw: dict[str, Any] = dict(num_workers=cfg.optim.num_workers, persistent_workers=False)
    if cfg.optim.num_workers > 0:
        loader_kw["prefetch_factor"] = 2
    val_loader = DataLoader(val_ds, batch_size=cfg.optim.batch_size, shuffle=False, **loader_kw)

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.optim.warmup_steps, cfg.optim.steps))
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    step, best_auc, history, evals = 0, None, [], []
    last_path, best_path = ckpt_dir / "last.pt", ckpt_dir / "best.pt"
    if resume and last_path.exists():
        state = load_checkpoint(last_path)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step, best_auc = state["step"], state.get("best_auc")
        history, evals = state.get("history", []), state.get("evals", [])
        if "extra" in state:
            model.load_extra_state(state["extra"])
        log.info("resumed from %s at step %d", last_path, step)

    def snapshot() -> dict[str, Any]:
        return {
            "model": model.state_dict(),
            "model_config": json.loads(cfg.model.model_dump_json()),
            "train_config": json.loads(cfg.model_dump_json()),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "step": step,
            "best_auc": best_auc,
            "history": history,
            "evals": evals,
            "extra": model.extra_state(),
            "data_summary": {
                "train_crops": len(train_recs),
                "val_crops": len(val_recs),
                "datasets": sorted({r.dataset for r in train_recs}),
                "pseudo_fakes": cfg.data.pseudo_fakes is not None,
            },
            "saved": time.time(),
        }

    def validate() -> dict[str, Any]:
        scores = score_loader(model, val_loader, device)
        labels = [val_ds.label_of(i) for i in range(len(val_ds))]
        vids = [val_ds.video_of(i) for i in range(len(val_ds))]
        m = compute_metrics(labels, scores.tolist(), vids)
        model.train()
        return {"step": step, **m.as_dict(), "labels": labels, "scores": scores.tolist()}

    def on_term(signum, frame):  # noqa: ANN001 - signal handler signature
        raise _Stop()

    old_term = signal.signal(signal.SIGTERM, on_term)
    show_progress = os.environ.get("SWAPWATCH_PROGRESS", "1") == "1"
    model.train()
    epoch = step // max(1, len(train_ds) // cfg.optim.batch_size)
    progress = Progress(
        TextColumn("[bold]train[/] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        disable=not show_progress,
    )
    interrupted = False
    try:
        with progress:
            task = progress.add_task(cfg.name, total=cfg.optim.steps, completed=step, info="")
            t0 = time.time()
            while step < cfg.optim.steps:
                train_ds.epoch = epoch
                order = torch.Generator().manual_seed(cfg.seed + epoch)
                sampling: dict[str, Any] = {"shuffle": True}
                if cfg.data.balance_sources > 0:
                    weights = source_weights(train_ds.records, cfg.data.balance_sources)
                    sampling = {"sampler": WeightedRandomSampler(
                        weights.tolist(), num_samples=len(train_ds), replacement=True, generator=order)}
                loader = DataLoader(
                    train_ds, batch_size=cfg.optim.batch_size, drop_last=True,
                    generator=order, **sampling, **loader_kw,
                )
                if len(loader) == 0:
                    raise SwapwatchError(
                        f"batch_size {cfg.optim.batch_size} is larger than the {len(train_ds)} training crops"
                    )
                for x, y, _ in loader:
                    if x.dim() == 5:  # (pairs, 2, C, H, W) from TrainPairs: real and fake side by side
                        x, y = x.flatten(0, 1), y.flatten()
                    x, y = x.to(device, non_blocking=True), y.to(device)
                    with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                        out = model(x)
                    losses = model.losses(out, y)
                    opt.zero_grad(set_to_none=True)
                    scaler.scale(losses["total"]).backward()
                    scaler.unscale_(opt)
                    model.on_after_backward(step)
                    if cfg.optim.grad_clip:
                        torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
                    scaler.step(opt)
                    scaler.update()
                    sched.step()
                    step += 1
                    if step % cfg.log_every == 0 or step == 1:
                        row = {"step": step, "lr": sched.get_last_lr()[0], "time": time.time() - t0}
                        row.update({k: float(v.detach()) for k, v in losses.items()})
                        history.append(row)
                        progress.update(task, info=f"loss {row['total']:.4f}")
                        if not show_progress and step % (cfg.log_every * 5) == 0:
                            log.info("step %d/%d: loss %.4f", step, cfg.optim.steps, row["total"])
                    progress.update(task, completed=step)
                    if step % cfg.eval_every == 0 or step == cfg.optim.steps:
                        ev = validate()
                        evals.append({k: v for k, v in ev.items() if k not in ("labels", "scores")})
                        log.info("step %d: val AUC %s video AUC %s", step, ev["auc"], ev["video_auc"])
                        if cfg.keep_eval_checkpoints:
                            save_checkpoint(ckpt_dir / f"step_{step:05d}.pt", snapshot())
                        if ev["auc"] is not None and (best_auc is None or ev["auc"] > best_auc):
                            best_auc = ev["auc"]
                            save_checkpoint(best_path, snapshot())
                    if step % cfg.checkpoint_every == 0:
                        save_checkpoint(last_path, snapshot())
                    if step >= cfg.optim.steps:
                        break
                epoch += 1
    except (KeyboardInterrupt, _Stop):
        interrupted = True
        log.warning("interrupted at step %d: saving %s", step, last_path)
    finally:
        signal.signal(signal.SIGTERM, old_term)
        save_checkpoint(last_path, snapshot())
    if interrupted:
        raise KeyboardInterrupt

    final = validate()
    report = {
        "name": cfg.name,
        "steps": step,
        "best_val_auc": best_auc,
        "final_val": {k: v for k, v in final.items() if k not in ("labels", "scores")},
        "evals": evals,
        "history": history,
        "device": str(device),
        "pretrained_backbone": getattr(model, "pretrained", None),
    }
    (run_dir / "metrics.json").write_text(json.dumps(report, indent=2))
    plot_loss_curves(history, run_dir / "loss.png", title=f"{cfg.name} losses")
    plot_roc({"val (pseudo-fakes)": (final["labels"], final["scores"])}, run_dir / "roc.png", title=f"{cfg.name} ROC")
    return TrainResult(run_dir, step, best_auc, last_path, best_path if best_path.exists() else None)
