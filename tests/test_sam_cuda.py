"""CUDA-only checks of the SAM engine (run with `pytest -m cuda` on a machine with a GPU).

The CPU suite deselects the `cuda` marker (pyproject addopts). These run the same test double as
tests/test_sam.py, on the GPU: fp16 by default, memory reporting, the cache emptied between
chunks, and memory given back after an out-of-memory failure.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from reasam import models
from reasam.engines import sam
from reasam.engines.base import Prompt
from reasam.errors import ReasamError

from .test_sam import SamEnv, make_mix, make_sam_env, no_spans, run_job, sdr

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.fixture
def sam_env(tmp_path, monkeypatch) -> Iterator[SamEnv]:
    yield from make_sam_env(tmp_path, monkeypatch)


def test_fp16_on_cuda_by_default(sam_env, tmp_path):
    engine = sam_env.engine(device="auto")
    mix = make_mix(tmp_path, seconds=6.0, bursts=[2.0])
    _, target, residual = run_job(mix.path, tmp_path / "job", prompt="bass", quality="fast")
    info = engine.manager.state()
    assert info["device"].startswith("cuda") and info["dtype"] == "float16"
    call = engine.manager._state.loaded.model.calls[-1]
    assert call["dtype"] == torch.float16 and call["device"].startswith("cuda")
    assert sdr(target, mix.sources["bass"]) > 30  # fp16 input: ≈ 1e-3 relative error
    assert np.max(np.abs(target + residual - mix.mix)) < 1e-6  # the sum rule does not care
    assert info["memory_bytes"] > 0 and info["peak_memory_bytes"] >= info["memory_bytes"]


def test_cache_emptied_between_chunks(sam_env, tmp_path):
    engine = sam_env.engine(device="cuda", chunk_seconds=8.0, overlap_seconds=1.0)
    mix = make_mix(tmp_path, seconds=30.0)
    run_job(mix.path, tmp_path / "warm", prompt="bass", quality="fast", region=_region(0, 2))
    loaded = torch.cuda.memory_allocated()
    run_job(mix.path, tmp_path / "job", prompt="bass", quality="fast")
    assert torch.cuda.memory_allocated() <= loaded + 1_000_000
    # Nothing cached beyond the weights' own blocks once the job is over.
    assert torch.cuda.memory_reserved() - torch.cuda.memory_allocated() < 64 * 2**20
    assert engine.manager.state()["active_jobs"] == 0


def test_out_of_memory_gives_memory_back(sam_env, tmp_path):
    from sam_audio.testing import write_model_dir

    folder = write_model_dir(tmp_path / "oom", "large", oom_above_seconds=2.0)
    engine = sam_env.engine(model_path=folder, variant="large", device="cuda")
    sep = engine.prepare(Prompt("bass"), "fast", no_spans, 48000)
    before = torch.cuda.memory_allocated()
    with pytest.raises(ReasamError) as info:
        sep.separate(np.zeros((2, 20 * 48000), dtype=np.float32), 0.0)
    assert info.value.code == "out_of_memory" and "try variant" in info.value.message
    assert torch.cuda.memory_allocated() <= before + 1_000_000
    sep = engine.prepare(Prompt("bass"), "fast", no_spans, 48000)
    out = sep.separate(np.zeros((2, 48000), dtype=np.float32), 0.0)
    assert out.shape == (2, 48000)
    sep.close()


def test_seeded_noise_on_cuda_repeats_and_leaves_the_rng_alone(sam_env, tmp_path):
    """The noise upstream draws on the model's device (sam_audio/model/model.py, randn_like) is
    seeded per call on CUDA too, and the CUDA generator's state is given back."""
    sam_env.engine(device="cuda")
    mix = make_mix(tmp_path, seconds=4.0)
    before = torch.cuda.get_rng_state()
    a = run_job(mix.path, tmp_path / "a", prompt="bass", quality="fast", seed=5)[1]
    b = run_job(mix.path, tmp_path / "b", prompt="bass", quality="fast", seed=5)[1]
    c = run_job(mix.path, tmp_path / "c", prompt="bass", quality="fast", seed=6)[1]
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert torch.equal(torch.cuda.get_rng_state(), before)


def test_mask_on_gpu_matches_cpu():
    x = torch.randn(2, 200_000)
    t, r = torch.randn(200_000), torch.randn(200_000)
    cpu = sam.ratio_mask_stems(x, t, r)
    gpu = sam.ratio_mask_stems(x.cuda(), t.cuda(), r.cuda()).cpu()
    assert torch.max(torch.abs(cpu - gpu)) < 1e-4


def test_suggestion_uses_the_gpu_size():
    total = models.device_memory(torch.device("cuda"))
    assert total and total > 0
    assert models.suggest_variant("large", total) in ("base", "small")


def _region(start: float, end: float):
    from reasam.request import Region

    return Region(start, end)
