"""Pseudo-fakes made from real aligned face crops only (self-blends and decoder reconstructions)."""

from swapwatch.train.pseudofakes.generator import KINDS, PseudoFake, PseudoFakeConfig, PseudoFakeGenerator
from swapwatch.train.pseudofakes.masks import InnerMaskConfig, MaskConfig, face_hull_mask, inner_face_mask
from swapwatch.train.pseudofakes.reconstruct import ReconstructConfig, reconstruct_blend
from swapwatch.train.pseudofakes.self_blend import SelfBlendConfig, self_blend

__all__ = [
    "KINDS",
    "InnerMaskConfig",
    "MaskConfig",
    "PseudoFake",
    "PseudoFakeConfig",
    "PseudoFakeGenerator",
    "ReconstructConfig",
    "SelfBlendConfig",
    "face_hull_mask",
    "inner_face_mask",
    "reconstruct_blend",
    "self_blend",
]
