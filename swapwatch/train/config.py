"""The training recipe: one YAML file validated by TrainConfig (unknown keys are errors naming the field).

Relative paths in a recipe are taken relative to the directory `swapwatch train` runs in (the repository
root in the README's examples), not relative to the recipe file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from swapwatch.config import StrictModel
from swapwatch.train.data.cache import FaceCacheConfig
from swapwatch.train.data.config import DatasetConfig
from swapwatch.train.degrade import DegradeConfig
from swapwatch.train.models import ModelConfig
from swapwatch.train.pseudofakes.generator import PseudoFakeConfig


class SamplesSource(StrictModel):
    """Real faces that installed packages ship (insightface, scikit-image): the offline data for smoke runs."""

    format: Literal["samples"] = Field("samples", description="Package-shipped real face images.")
    split: Literal["train", "val", "test", "all"] = Field("all", description="Split these items belong to.")


Source = Annotated[DatasetConfig | SamplesSource, Field(discriminator="format")]


class CacheSettings(FaceCacheConfig):
    """The aligned-crop cache (see swapwatch.train.data.cache.FaceCacheConfig), with a default folder."""

    root: Path = Field(Path(".cache/faces"), description="Folder of the aligned-crop cache (built once, reused).")


class DataSettings(StrictModel):
    sources: list[Source] = Field(..., min_length=1, description="Datasets to train on (their train split).")
    val_sources: list[Source] = Field(
        default_factory=list,
        description="Datasets for validation; empty = hold out `val_fraction` of the training videos.",
    )
    val_fraction: float = Field(0.15, ge=0.0, lt=1.0, description="Share of training videos held out.")
    cache: CacheSettings = Field(default_factory=CacheSettings, description="Aligned-crop cache settings.")
    pseudo_fakes: PseudoFakeConfig | None = Field(
        default_factory=PseudoFakeConfig,
        description="Pseudo-fakes made from real crops; null to train on the datasets' own fakes only.",
    )
    fake_fraction: float = Field(
        0.5, ge=0.0, le=1.0, description="Chance that a real crop is turned into a pseudo-fake when sampled."
    )
    use_dataset_fakes: bool = Field(True, description="Also train on fakes the datasets contain.")
    degrade: DegradeConfig = Field(
        default_factory=DegradeConfig,
        description="Quality degradations applied to real AND fake samples alike.",
    )
    paired: bool = Field(
        False,
        description="SBI-style batches: every real crop together with its own pseudo-fake, one jitter and "
        "degradation draw for both (batch_size counts pairs); fake_fraction is then unused.",
    )
    balance_sources: float = Field(
        0.0, ge=0.0, le=1.0,
        description="Source balancing of the sampling: each source's share ~ n_crops ** (1 - this); 0 = uniform "
        "over crops, 1 = every source equally often.",
    )
    jitter: float = Field(0.04, ge=0.0, le=0.2, description="Random scale/shift jitter of the aligned crop.")
    hflip: bool = Field(True, description="Random horizontal flips.")


class OptimSettings(StrictModel):
    steps: int = Field(1000, ge=1, description="Optimizer steps in total.")
    batch_size: int = Field(32, ge=2, description="Samples per step (>=2 for contrastive losses).")
    lr: float = Field(3e-4, gt=0, description="Peak learning rate (AdamW).")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    warmup_steps: int = Field(50, ge=0, description="Linear warm-up steps before the cosine decay.")
    grad_clip: float | None = Field(1.0, description="Max gradient norm; null disables clipping.")
    num_workers: int = Field(1, ge=0, description="DataLoader worker processes.")


class TrainConfig(StrictModel):
    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]+$", description="Run name; outputs go to output_dir/name.")
    output_dir: Path = Field(Path("runs"), description="Parent folder of run folders.")
    seed: int = Field(0, description="Seed for torch, numpy and data sampling.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = CUDA when available.")
    amp: bool = Field(True, description="Mixed precision (bfloat16/float16 autocast) on GPU; ignored on CPU.")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads on CPU; null = torch default.")
    model: ModelConfig = Field(..., description="Detector family and its settings (method: masm | airl).")
    data: DataSettings
    optim: OptimSettings = Field(default_factory=OptimSettings)
    log_every: int = Field(10, ge=1, description="Steps between logged loss rows.")
    eval_every: int = Field(200, ge=1, description="Steps between validation passes.")
    checkpoint_every: int = Field(100, ge=1, description="Steps between checkpoints (last.pt).")
    keep_eval_checkpoints: bool = Field(
        False,
        description="Also keep a checkpoint at every validation pass (checkpoints/step_NNNNN.pt), to choose one "
        "later on genuine fakes rather than by the pseudo-fake validation AUC.",
    )
    max_val_items: int = Field(2000, ge=2, description="Cap on validation crops (each scored real and faked).")

    @property
    def run_dir(self) -> Path:
        return self.output_dir / self.name
