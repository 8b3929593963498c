"""One entry point for the training data loader: pick a pseudo-fake recipe by weight and run it.

Recipes (all made from a single real aligned crop, no fake data needed):

* "self_blend":  Self-Blended Images style colour/sharpness/geometry mismatch over a face-hull mask
  (teaches blending boundaries and statistics mismatches);
* "reconstruct": the inner face re-rendered through a random up-sampling decoder (teaches generator
  up-sampling fingerprints, the target of the AIRL frequency stream);
* "clean_face":  a restored, cleaner inner face pasted into a grainy context (the direction modern
  swappers with face restorers take; see cleaner.py);
* "whole_synth": the whole crop re-rendered through a periodic up-sampler (faces synthesised whole);
* "restored":    the face rendered by a small encoder-decoder trained here on real faces, upsampled and
  pasted back (a real generator's texture; see restorer.py).

A recipe may change the real side too: `PseudoFake.real` is the real image the fake must be paired
with (clean_face's grainy context); it is the untouched crop for the other recipes.

The mix is a weight table, validated so a misspelt recipe name is a config error naming the key.
Quality degradations are not applied here: `swapwatch.train.degrade.degrade` runs afterwards on real
and fake samples alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import Field, field_validator

from swapwatch.config import StrictModel
from swapwatch.train.pseudofakes.cleaner import CleanFaceConfig, WholeSynthConfig, clean_face, whole_synth
from swapwatch.train.pseudofakes.reconstruct import ReconstructConfig, check_weights, reconstruct_blend
from swapwatch.train.pseudofakes.restorer import Render, RestorerConfig, restored_face
from swapwatch.train.pseudofakes.self_blend import SelfBlendConfig, self_blend

KINDS = ("self_blend", "reconstruct", "clean_face", "whole_synth", "restored")


class PseudoFakeConfig(StrictModel):
    """Which pseudo-fake recipes to use, how often, and each one's settings."""

    self_blend: SelfBlendConfig = Field(default_factory=SelfBlendConfig, description="Self-blend settings.")
    reconstruct: ReconstructConfig = Field(
        default_factory=ReconstructConfig, description="Decoder-reconstruction settings."
    )
    clean_face: CleanFaceConfig = Field(default_factory=CleanFaceConfig, description="Cleaner-face settings.")
    whole_synth: WholeSynthConfig = Field(default_factory=WholeSynthConfig, description="Whole-crop settings.")
    restored: RestorerConfig = Field(default_factory=RestorerConfig, description="Restorer-network settings.")
    mix: dict[str, float] = Field(
        {"self_blend": 0.7, "reconstruct": 0.3},
        description=f"Relative weight of each recipe ({', '.join(KINDS)}); non-negative, positive sum.",
    )

    @field_validator("mix")
    @classmethod
    def _mix(cls, v: dict[str, float]) -> dict[str, float]:
        return check_weights(v, KINDS, "pseudo-fake kind")


@dataclass
class PseudoFake:
    """A generated fake: the image (uint8 BGR, crop-sized), its blend-weight mask (float32 in [0, 1];
    where it is 0 the image equals `real`), the recipe name (one of KINDS) and the real image to pair it
    with (the input crop unless the recipe changed the context)."""

    image: np.ndarray
    mask: np.ndarray
    kind: str
    real: np.ndarray


class PseudoFakeGenerator:
    """Callable turning (crop, landmarks, rng) into a PseudoFake; stateless apart from its config, so
    it is safe to share across DataLoader workers (randomness comes only from the rng passed in)."""

    def __init__(self, cfg: PseudoFakeConfig | None = None) -> None:
        self.cfg = cfg or PseudoFakeConfig()
        names = [k for k in KINDS if self.cfg.mix.get(k, 0.0) > 0]
        weights = np.asarray([self.cfg.mix[k] for k in names], np.float64)
        self.kinds: tuple[str, ...] = tuple(names)
        self._p = weights / weights.sum()
        self._render: Render | None = None

    def restorer(self) -> Render:
        """The restorer network, loaded on first use in each process (DataLoader workers included); torch is
        imported only then."""
        if self._render is None:
            from functools import partial

            from swapwatch.train.pseudofakes.restorer_net import load_restorer, run_net

            self._render = partial(run_net, load_restorer(self.cfg.restored.weights))
        return self._render

    def __getstate__(self) -> dict[str, object]:
        # Workers load their own copy; a loaded network is not sent through pickling.
        return {**self.__dict__, "_render": None}

    def __call__(self, crop: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator) -> PseudoFake:
        kind = self.kinds[int(rng.choice(len(self.kinds), p=self._p))]
        real = crop
        if kind == "self_blend":
            image, mask = self_blend(crop, landmarks, rng, self.cfg.self_blend)
        elif kind == "reconstruct":
            image, mask = reconstruct_blend(crop, landmarks, rng, self.cfg.reconstruct)
        elif kind == "clean_face":
            image, mask, real = clean_face(crop, landmarks, rng, self.cfg.clean_face)
        elif kind == "whole_synth":
            image, mask = whole_synth(crop, landmarks, rng, self.cfg.whole_synth)
        else:
            image, mask = restored_face(crop, landmarks, rng, self.restorer(), self.cfg.restored)
        return PseudoFake(image=image, mask=mask, kind=kind, real=real)
