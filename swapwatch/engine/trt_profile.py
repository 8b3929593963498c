"""`BatchProfile`: the TensorRT optimization profile on the batch dimension, shared by builders and caches."""

from __future__ import annotations

from pydantic import Field, model_validator

from swapwatch.config import StrictModel


class BatchProfile(StrictModel):
    """The optimization profile on the batch dimension; spatial dims are fixed to the model's input size.

    TensorRT tunes kernels for `opt_batch` and accepts any batch in [min_batch, max_batch]; a larger
    `max_batch` costs activation memory (reserved for the largest shape) and build time, not speed at `opt`.
    """

    min_batch: int = Field(1, ge=1, description="Smallest batch the plan accepts.")
    opt_batch: int = Field(8, ge=1, description="Batch the kernels are tuned for (typical faces per batch).")
    max_batch: int = Field(32, ge=1, description="Largest batch; the engine splits bigger batches.")

    @model_validator(mode="after")
    def _ordered(self) -> BatchProfile:
        if not self.min_batch <= self.opt_batch <= self.max_batch:
            raise ValueError(
                f"need min_batch <= opt_batch <= max_batch, got {self.min_batch}, {self.opt_batch}, {self.max_batch}"
            )
        return self

    def shapes(self, input_size: int) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(min, opt, max) NCHW shapes for `profile.set_shape`."""
        s = input_size
        return (self.min_batch, 3, s, s), (self.opt_batch, 3, s, s), (self.max_batch, 3, s, s)
