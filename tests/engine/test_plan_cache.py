"""Plan cache keying and staleness, with fake GPU descriptors and a fake builder: no GPU needed.

The builder is the only part that needs TensorRT; everything deciding *whether* to build (keys,
descriptors, mismatches, rebuilds of stale or half-written plans) is exercised here for real, on files.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from swapwatch.engine.metadata import (
    AlignmentSpec,
    EngineMetadata,
    file_sha256,
    read_metadata,
    sidecar_path,
    write_metadata,
)
from swapwatch.engine.plan_cache import (
    BatchProfile,
    GpuTarget,
    PlanCache,
    StalePlanError,
    check_plan,
    descriptor_path,
    fresh_plan,
    mismatches,
    new_descriptor,
    plan_key,
    read_descriptor,
    write_descriptor,
)
from swapwatch.errors import ConfigError, ModelFileError

H100 = GpuTarget(gpu_name="NVIDIA H100 80GB HBM3", compute_capability="9.0", tensorrt_version="11.1.0")
SHA = "a" * 64


def fake_onnx(folder: Path, content: bytes = b"fake onnx bytes", precision: str = "fp16") -> Path:
    """A model file with a valid metadata sidecar (the cache reads and hash-checks it, never parses it)."""
    path = folder / "model.onnx"
    path.write_bytes(content)
    write_metadata(path, EngineMetadata(
        method="masm", input_size=64, mean=[0.5] * 3, std=[0.5] * 3,
        alignment=AlignmentSpec(name="arcface5", size=64, margin=0.15, template=[[0.0, 0.0]] * 5),
        precision=precision, model_sha256=file_sha256(path),  # type: ignore[arg-type]
    ))
    return path


class FakeBuilder:
    """Stands in for trt_build.build_plan: writes recognisable plan bytes and records its calls."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[dict[str, object]] = []
        self.fail = fail

    def __call__(self, onnx: Path, plan: Path, size: int, profile: BatchProfile, workspace: int | None,
                 timing: Path | None, device: int) -> None:
        self.calls.append({"onnx": onnx, "plan": plan, "size": size, "profile": profile, "timing": timing})
        if self.fail:
            plan.write_bytes(b"half a plan")
            raise ModelFileError(onnx, "TensorRT failed to build a plan: fake failure")
        plan.write_bytes(b"PLAN:" + onnx.read_bytes() + repr(profile).encode())


# ------------------------------------------------------------------------------------------- profiles


@pytest.mark.parametrize(
    ("values", "ok"),
    [
        ({}, True),
        ({"min_batch": 1, "opt_batch": 1, "max_batch": 1}, True),
        ({"min_batch": 2, "opt_batch": 8, "max_batch": 64}, True),
        ({"opt_batch": 64, "max_batch": 32}, False),
        ({"min_batch": 4, "opt_batch": 2}, False),
        ({"max_batch": 0}, False),
        ({"max_batch": 8, "bogus": 1}, False),
    ],
)
def test_batch_profile_validation(values: dict[str, int], ok: bool) -> None:
    from swapwatch.config import parse_config

    if ok:
        p = parse_config(BatchProfile, values)
        assert p.min_batch <= p.opt_batch <= p.max_batch
    else:
        with pytest.raises(ConfigError):
            parse_config(BatchProfile, values)


def test_profile_shapes_fix_the_spatial_dims() -> None:
    assert BatchProfile(opt_batch=8, max_batch=32).shapes(224) == ((1, 3, 224, 224), (8, 3, 224, 224), (32, 3, 224, 224))


# ------------------------------------------------------------------------------------------------ keys

BASE_KEY = {"model_sha256": SHA, "target": H100, "profile": BatchProfile(), "input_size": 224}


@pytest.mark.parametrize(
    "change",
    [
        {"model_sha256": "b" * 64},
        {"target": H100.model_copy(update={"gpu_name": "NVIDIA A10"})},
        {"target": H100.model_copy(update={"compute_capability": "8.6"})},
        {"target": H100.model_copy(update={"tensorrt_version": "11.4.0"})},
        {"profile": BatchProfile(max_batch=64)},
        {"profile": BatchProfile(opt_batch=16)},
        {"profile": BatchProfile(min_batch=2, opt_batch=8)},
        {"input_size": 256},
    ],
    ids=["model", "gpu", "compute-capability", "tensorrt", "max-batch", "opt-batch", "min-batch", "input-size"],
)
def test_plan_key_changes_with_every_field(change: dict[str, object]) -> None:
    base = plan_key(**BASE_KEY)  # type: ignore[arg-type]
    assert plan_key(**BASE_KEY) == base  # type: ignore[arg-type]  # deterministic
    assert plan_key(**{**BASE_KEY, **change}) != base  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ staleness


def descriptor(**update: object) -> object:
    from swapwatch.engine.plan_cache import PlanDescriptor

    d = PlanDescriptor(model_sha256=SHA, gpu_name=H100.gpu_name, compute_capability="9.0", tensorrt_version="11.1.0",
                       profile=BatchProfile(), input_size=224, plan_sha256="c" * 64, built_at="2026-01-01T00:00:00")
    return d.model_copy(update=update)


@pytest.mark.parametrize(
    ("update", "kwargs", "expected"),
    [
        ({}, {}, []),
        ({}, {"model_sha256": SHA, "profile": BatchProfile(), "plan_sha256": "c" * 64}, []),
        ({"gpu_name": "NVIDIA A10"}, {}, ["GPU: plan built on 'NVIDIA A10', this machine has 'NVIDIA H100 80GB HBM3'"]),
        ({"compute_capability": "8.6"}, {}, ["compute capability: plan 8.6, this GPU 9.0"]),
        ({"tensorrt_version": "11.0.0"}, {}, ["TensorRT: plan built with 11.0.0, installed 11.1.0"]),
        ({}, {"model_sha256": "d" * 64}, ["model: plan built from sha256 aaaaaaaaaaaa..., model is now dddddddddddd..."]),
        ({}, {"profile": BatchProfile(max_batch=64)}, ["profile: plan batch 1/8/32, wanted batch 1/8/64"]),
        ({}, {"plan_sha256": "e" * 64}, ["plan file: sha256 eeeeeeeeeeee... but the descriptor was written for cccccccccccc..."]),
        ({"gpu_name": "NVIDIA L4", "compute_capability": "8.9", "tensorrt_version": "10.13.0"}, {}, 3),
    ],
    ids=["fresh", "fresh-all-checked", "gpu", "cc", "tensorrt", "model", "profile", "plan-bytes", "everything"],
)
def test_mismatches_name_each_difference(update: dict[str, object], kwargs: dict[str, object], expected: object) -> None:
    found = mismatches(descriptor(**update), H100, **kwargs)  # type: ignore[arg-type]
    assert found == expected if isinstance(expected, list) else len(found) == expected


def write_plan(folder: Path, target: GpuTarget, source: Path | None = None, content: bytes = b"PLAN") -> Path:
    plan = folder / "model.plan"
    plan.write_bytes(content)
    sha = file_sha256(source) if source is not None else SHA
    write_descriptor(plan, new_descriptor(plan, source, sha, target, BatchProfile(), 64, "fp32"))
    return plan


@pytest.mark.parametrize(
    ("damage", "error", "message"),
    [
        (lambda plan, onnx: None, None, ""),
        (lambda plan, onnx: None, StalePlanError, "GPU: plan built on"),  # checked against another target below
        (lambda plan, onnx: plan.write_bytes(b"PLAN, but another"), StalePlanError, "plan file: sha256"),
        (lambda plan, onnx: descriptor_path(plan).unlink(), ModelFileError, "missing build descriptor for model.plan"),
        (lambda plan, onnx: descriptor_path(plan).write_text("{"), ModelFileError, "not valid JSON"),
        (lambda plan, onnx: descriptor_path(plan).write_text(json.dumps({"format": "swapwatch-plan/1"})), ModelFileError,
         "gpu_name"),
        (lambda plan, onnx: onnx.write_bytes(b"re-exported model"), StalePlanError, "model: plan built from sha256"),
        (lambda plan, onnx: plan.unlink(), ModelFileError, "no such plan file"),
    ],
    ids=["fresh", "other-gpu", "plan-bytes", "no-descriptor", "bad-json", "bad-descriptor", "source-changed", "no-plan"],
)
def test_check_plan_refuses_stale_or_broken_plans(tmp_path: Path, damage, error, message: str) -> None:
    onnx = fake_onnx(tmp_path)
    plan = write_plan(tmp_path, H100, source=onnx)
    damage(plan, onnx)
    target = H100.model_copy(update={"gpu_name": "NVIDIA A10"}) if message.startswith("GPU") else H100
    if error is None:
        assert check_plan(plan, target).gpu_name == H100.gpu_name
        return
    with pytest.raises(error, match=message) as info:
        check_plan(plan, target)
    assert "model.plan" in str(info.value)


def test_stale_error_lists_every_mismatch_and_how_to_fix(tmp_path: Path) -> None:
    plan = write_plan(tmp_path, H100)
    other = GpuTarget(gpu_name="NVIDIA L4", compute_capability="8.9", tensorrt_version="11.4.0")
    with pytest.raises(StalePlanError) as info:
        check_plan(plan, other)
    text = str(info.value)
    assert text.startswith(str(plan))
    for needle in ("'NVIDIA H100 80GB HBM3'", "'NVIDIA L4'", "plan 9.0, this GPU 8.9", "11.1.0, installed 11.4.0",
                   "swapwatch export --format tensorrt"):
        assert needle in text


# ----------------------------------------------------------------------------------------------- cache


def test_cache_builds_once_then_reuses(tmp_path: Path) -> None:
    onnx = fake_onnx(tmp_path)
    cache, builder = PlanCache(tmp_path / "plans"), FakeBuilder()
    plan = cache.get_or_build(onnx, target=H100, builder=builder)
    assert len(builder.calls) == 1 and plan.parent == cache.root and plan.suffix == ".plan"
    assert builder.calls[0]["timing"] == cache.timing_cache_path(H100)
    meta = read_metadata(plan)  # sidecar written, hash of the plan bytes
    assert meta.precision == "fp16" and meta.export["format"] == "tensorrt" and meta.export["gpu"] == H100.gpu_name
    assert meta.export["source_sha256"] == file_sha256(onnx)
    desc = read_descriptor(plan)
    assert (desc.gpu_name, desc.tensorrt_version, desc.source) == (H100.gpu_name, "11.1.0", str(onnx.resolve()))
    assert cache.get_or_build(onnx, target=H100, builder=builder) == plan
    assert len(builder.calls) == 1
    assert cache.lookup(onnx, H100, BatchProfile()) == plan
    assert not list(cache.root.glob("*.tmp"))


@pytest.mark.parametrize(
    "change",
    ["gpu", "compute-capability", "tensorrt", "model", "profile"],
)
def test_cache_builds_again_when_anything_in_the_key_changes(tmp_path: Path, change: str) -> None:
    onnx = fake_onnx(tmp_path)
    cache, builder = PlanCache(tmp_path / "plans"), FakeBuilder()
    first = cache.get_or_build(onnx, target=H100, builder=builder)
    target, profile = H100, BatchProfile()
    if change == "gpu":
        target = H100.model_copy(update={"gpu_name": "NVIDIA A100-SXM4-80GB"})
    elif change == "compute-capability":
        target = H100.model_copy(update={"compute_capability": "9.0a"})
    elif change == "tensorrt":
        target = H100.model_copy(update={"tensorrt_version": "11.4.0"})
    elif change == "model":
        onnx = fake_onnx(tmp_path, content=b"a retrained model")
    else:
        profile = BatchProfile(opt_batch=4, max_batch=16)
    assert cache.lookup(onnx, target, profile) is None
    second = cache.get_or_build(onnx, profile, target=target, builder=builder)
    assert second != first and len(builder.calls) == 2
    assert read_descriptor(second).target() == target and read_descriptor(second).profile == profile
    assert read_metadata(second).model_sha256 == file_sha256(second)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda plan: plan.write_bytes(b"truncated"), "sidecar does not match"),
        (lambda plan: descriptor_path(plan).unlink(), "missing build descriptor"),
        (lambda plan: sidecar_path(plan).unlink(), "missing metadata sidecar"),
        (lambda plan: descriptor_path(plan).write_text(
            descriptor_path(plan).read_text().replace(H100.gpu_name, "NVIDIA T4")), "GPU: plan built on 'NVIDIA T4'"),
    ],
    ids=["plan-bytes", "descriptor", "sidecar", "descriptor-says-other-gpu"],
)
def test_cache_rebuilds_a_damaged_or_foreign_entry(tmp_path: Path, damage, reason: str,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    onnx = fake_onnx(tmp_path)
    cache, builder = PlanCache(tmp_path / "plans"), FakeBuilder()
    plan = cache.get_or_build(onnx, target=H100, builder=builder)
    good = plan.read_bytes()
    damage(plan)
    with caplog.at_level(logging.WARNING, logger="swapwatch.engine.plan_cache"):
        assert cache.get_or_build(onnx, target=H100, builder=builder) == plan
    assert len(builder.calls) == 2 and plan.read_bytes() == good
    assert any("rebuilding stale" in r.message and reason in r.message for r in caplog.records)
    check_plan(plan, H100)


def test_failed_build_leaves_nothing_that_looks_valid(tmp_path: Path) -> None:
    onnx = fake_onnx(tmp_path)
    cache = PlanCache(tmp_path / "plans")
    with pytest.raises(ModelFileError, match="fake failure"):
        cache.get_or_build(onnx, target=H100, builder=FakeBuilder(fail=True))
    assert not list(cache.root.glob("*.plan")) and not list(cache.root.glob("*.build.json"))
    assert not list(cache.root.glob("*.tmp")) and not list(cache.root.glob(".*.tmp"))
    assert cache.lookup(onnx, H100, BatchProfile()) is None


def test_cache_refuses_a_model_whose_sidecar_does_not_match(tmp_path: Path) -> None:
    onnx = fake_onnx(tmp_path)
    onnx.write_bytes(b"swapped without re-export")
    with pytest.raises(ModelFileError, match="sidecar does not match model.onnx"):
        PlanCache(tmp_path / "plans").get_or_build(onnx, target=H100, builder=FakeBuilder())


@pytest.mark.parametrize(("env", "expected"), [(None, Path("~/.cache/swapwatch/plans").expanduser()),
                                               ("/srv/plans", Path("/srv/plans"))])
def test_default_cache_folder(monkeypatch: pytest.MonkeyPatch, env: str | None, expected: Path) -> None:
    if env is None:
        monkeypatch.delenv("SWAPWATCH_PLAN_CACHE", raising=False)
    else:
        monkeypatch.setenv("SWAPWATCH_PLAN_CACHE", env)
    assert PlanCache().root == expected
    assert PlanCache("/x/y").root == Path("/x/y")


# ------------------------------------------------------------------------- a stale plan file + a cache


@pytest.mark.parametrize(
    ("target", "source_changes", "with_cache", "outcome"),
    [
        (H100, False, True, "same"),
        (H100.model_copy(update={"gpu_name": "NVIDIA L40S", "compute_capability": "8.9"}), False, True, "rebuilt"),
        (H100.model_copy(update={"tensorrt_version": "11.4.0"}), False, True, "rebuilt"),
        (H100, True, True, "rebuilt"),
        (H100.model_copy(update={"tensorrt_version": "11.4.0"}), False, False, "refused"),
        (H100, True, False, "refused"),
    ],
    ids=["fresh", "other-gpu", "other-tensorrt", "model-re-exported", "no-cache", "no-cache-model-changed"],
)
def test_stale_plan_is_rebuilt_with_a_cache_and_refused_without(
    tmp_path: Path, target: GpuTarget, source_changes: bool, with_cache: bool, outcome: str
) -> None:
    onnx = fake_onnx(tmp_path)
    plan = write_plan(tmp_path, H100, source=onnx)
    if source_changes:
        onnx = fake_onnx(tmp_path, content=b"re-exported")  # same path, new bytes and sidecar
    builder = FakeBuilder()
    cache = PlanCache(tmp_path / "plans") if with_cache else None
    if outcome == "refused":
        with pytest.raises(StalePlanError, match="model.plan: stale engine"):
            fresh_plan(plan, target, cache, builder=builder)
        return
    got = fresh_plan(plan, target, cache, builder=builder)
    if outcome == "same":
        assert got == plan and not builder.calls
    else:
        assert got != plan and got.parent == tmp_path / "plans" and len(builder.calls) == 1
        assert builder.calls[0]["onnx"] == onnx.resolve()
        check_plan(got, target)


def test_stale_plan_without_its_source_cannot_be_rebuilt(tmp_path: Path) -> None:
    onnx = fake_onnx(tmp_path)
    plan = write_plan(tmp_path, H100, source=onnx)
    onnx.unlink()
    other = H100.model_copy(update={"tensorrt_version": "11.4.0"})
    with pytest.raises(StalePlanError, match="source ONNX .* is gone"):
        fresh_plan(plan, other, PlanCache(tmp_path / "plans"), builder=FakeBuilder())
