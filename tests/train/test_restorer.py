"""The restorer network and its pseudo-fakes, trained for a few steps on real faces from installed packages."""

from __future__ import annotations

import pickle
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from swapwatch.train.pseudofakes import PseudoFakeConfig, PseudoFakeGenerator
from swapwatch.train.pseudofakes.restorer import RestorerConfig, degrade_input, restored_face
from swapwatch.train.pseudofakes.restorer_net import (
    RestorerNet,
    ensure_restorer,
    load_restorer,
    run_net,
    train_restorer,
)
from tests.train.test_pseudofakes import FACES, _aligned

CROPS = [_aligned(name, 256)[0] for name in FACES]


def l1_on_degraded(net: RestorerNet, size: int = 64) -> float:
    """Mean absolute error of the network's output against the clean faces, from degraded inputs."""
    import cv2

    rng = np.random.default_rng(123)
    errs = []
    for crop in CROPS:
        clean = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
        out = run_net(net, degrade_input(clean, rng))
        errs.append(np.abs(out.astype(np.float32) - clean.astype(np.float32)).mean())
    return float(np.mean(errs))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[RestorerConfig, RestorerNet]:
    cfg = RestorerConfig(weights=tmp_path_factory.mktemp("restorer") / "r.pt", width=8, train_steps=80,
                         train_batch=4, train_size=64)
    return cfg, train_restorer(lambda i: CROPS[i], len(CROPS), cfg, seed=0)


def test_training_lowers_the_reconstruction_error(trained: tuple[RestorerConfig, RestorerNet]) -> None:
    cfg, net = trained
    torch.manual_seed(0)
    untrained = RestorerNet(cfg.width).eval()
    assert l1_on_degraded(net) < 0.5 * l1_on_degraded(untrained)


def test_saved_weights_reload_to_the_same_network(trained: tuple[RestorerConfig, RestorerNet]) -> None:
    cfg, net = trained
    again = load_restorer(cfg.weights)
    crop = CROPS[0][::4, ::4].copy()
    assert np.array_equal(run_net(net, crop), run_net(again, crop))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_restored_face_changes_only_the_masked_region(trained: tuple[RestorerConfig, RestorerNet], seed: int) -> None:
    cfg, net = trained
    crop, lm = _aligned(FACES[seed % len(FACES)], 256)
    fake, mask = restored_face(crop, lm, np.random.default_rng(seed), partial(run_net, net), cfg)
    assert fake.shape == crop.shape and fake.dtype == np.uint8
    assert mask.shape == crop.shape[:2] and 0.0 <= mask.min() and mask.max() <= 1.0
    assert np.array_equal(fake[mask == 0], crop[mask == 0])
    inside = mask > 0.5
    assert np.abs(fake[inside].astype(int) - crop[inside].astype(int)).mean() > 2.0


def test_restored_face_is_deterministic_per_seed(trained: tuple[RestorerConfig, RestorerNet]) -> None:
    cfg, net = trained
    crop, lm = _aligned("tom", 256)
    a = restored_face(crop, lm, np.random.default_rng(7), partial(run_net, net), cfg)[0]
    b = restored_face(crop, lm, np.random.default_rng(7), partial(run_net, net), cfg)[0]
    assert np.array_equal(a, b)


def test_ensure_restorer_keeps_existing_weights(trained: tuple[RestorerConfig, RestorerNet]) -> None:
    cfg, _ = trained
    before = cfg.weights.stat().st_mtime_ns
    ensure_restorer(cfg, [Path("never-read.png")], lambda p: pytest.fail(f"read {p}"), seed=0)
    assert cfg.weights.stat().st_mtime_ns == before


def test_generator_runs_the_restorer_and_pickles_without_it(trained: tuple[RestorerConfig, RestorerNet]) -> None:
    cfg, _ = trained
    gen = PseudoFakeGenerator(PseudoFakeConfig(mix={"restored": 1.0}, restored=cfg))
    crop, lm = _aligned("t1", 256)
    fake = gen(crop, lm, np.random.default_rng(0))
    assert fake.kind == "restored" and fake.real is crop
    clone = pickle.loads(pickle.dumps(gen))
    assert clone._render is None
    assert np.array_equal(clone(crop, lm, np.random.default_rng(0)).image, fake.image)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"work_sizes": [96, 130]}, "multiples of 4"),
        ({"work_sizes": []}, "work_sizes"),
        ({"train_size": 30}, "train_size"),
        ({"colour_match_prob": 1.5}, "colour_match_prob"),
        ({"weight": "x.pt"}, "weight"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict, needle: str) -> None:
    with pytest.raises(ValidationError, match=needle):
        RestorerConfig(**kwargs)


def test_missing_weights_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        load_restorer(tmp_path / "nothing.pt")


def test_pseudo_fakes_without_the_restorer_never_import_torch() -> None:
    """The demo clip makes self-blends in a process without torch: only the restorer's network needs it."""
    code = ("import sys, numpy as np; from swapwatch.train.pseudofakes import PseudoFakeGenerator; "
            "from swapwatch.train.pseudofakes.restorer import restored_face; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
