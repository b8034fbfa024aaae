"""Stem sets: several prompts in one job, summing to the region; cancel within engine steps;
presence figures ("not found").

Engines: dsp and spleeter for real, SAM-Audio through the test double (tests/sam_double, which
follows upstream's batching: sam_audio/processor.py and sam_audio/model/model.py `separate`).
Clips are a few seconds long, except the cancel tests' three-minute file.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from reasam import engines, pipeline, stemsets
from reasam.cache import ResultCache
from reasam.cli import main
from reasam.errors import JobCancelled, ReasamError
from reasam.jobs import JobManager, Priority
from reasam.request import OutputOptions, Request, Span, decode_request, encode_request, request_from_fields

from .test_sam import make_mix, make_sam_env

RATE = 44_100


@pytest.fixture
def sam_env(tmp_path, monkeypatch):
    yield from make_sam_env(tmp_path, monkeypatch)


def _read(path: Path) -> np.ndarray:
    return sf.read(path, dtype="float32", always_2d=True)[0].T


def _run(source: Path, out: Path, prompts: list[str], **kwargs) -> tuple[pipeline.Result, list[np.ndarray]]:
    request = Request(source, prompt=prompts[0], extra_prompts=tuple(prompts[1:]), **kwargs)
    result = pipeline.run(request, out, out.name)
    return result, [_read(s.path) for s in result.stems]


def _energy(x: np.ndarray) -> float:
    return float(np.square(x, dtype=np.float64).sum())


def _drum_mix(folder: Path, seconds: float = 3.0, name: str = "drums") -> tuple[Path, np.ndarray]:
    """Stereo: a 220 Hz tone and decaying clicks four times a second."""
    t = np.arange(round(seconds * RATE)) / RATE
    clicks = np.zeros_like(t)
    clicks[:: RATE // 4] = 1.0
    hits = np.convolve(clicks, np.exp(-np.arange(400) / 50.0), "same")
    mono = 0.2 * np.sin(2 * np.pi * 220 * t) + 0.5 * hits
    mix = np.stack([mono, 0.8 * mono]).astype(np.float32)
    path = folder / f"{name}.wav"
    sf.write(path, mix.T, RATE, subtype="FLOAT")
    return path, mix


# --- the request -------------------------------------------------------------------------------


def test_a_set_is_validated_once_for_every_front_door(tmp_path):
    src = tmp_path / "a.wav"
    with pytest.raises(ReasamError, match="twice"):
        Request(src, prompt="drums", extra_prompts=("Drums",))
    with pytest.raises(ReasamError, match="spans go with one prompt"):
        Request(src, prompt="drums", extra_prompts=("bass",), spans=(Span("+", 0, 1),))
    with pytest.raises(ReasamError, match="at most 8"):
        Request(src, prompt="a", extra_prompts=tuple("bcdefghi"))
    with pytest.raises(ReasamError, match="text for every prompt"):
        Request(src, prompt="", extra_prompts=("bass",), spans=(Span("+", 0, 1),))
    request = request_from_fields(src, {"prompt": "vocals; drums ;bass"})
    assert request.prompts == ("vocals", "drums", "bass") and request.is_set
    assert request_from_fields(src, {"prompt": ["vocals", "drums"]}).prompts == ("vocals", "drums")


def test_one_prompt_encodes_as_before_and_a_set_round_trips(tmp_path):
    single = Request(tmp_path / "a.wav", prompt="vocals")
    assert "extra_prompts" not in encode_request(single)  # fingerprints and cache keys unchanged
    assert not single.is_set and single.prompts == ("vocals",)
    stems = Request(tmp_path / "a.wav", prompt="vocals", extra_prompts=("drums", "bass"))
    again = decode_request(json.loads(json.dumps(encode_request(stems))))
    assert again == stems and again.prompts == ("vocals", "drums", "bass")


# --- sum rule, roles, sharing ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "engine, prompts",
    [
        ("dsp", ["drums"]),
        ("dsp", ["drums", "harmonic"]),
        ("spleeter", ["vocals", "drums"]),
        ("spleeter", ["vocals", "accompaniment", "drums"]),
    ],
)
def test_embedded_sets_sum_to_the_region(tmp_path, engine, prompts):
    path, mix = _drum_mix(tmp_path)
    result, stems = _run(path, tmp_path / "out", prompts, engine=engine, quality="fast")
    assert np.max(np.abs(np.sum(stems, axis=0) - mix)) < 1e-5
    roles = [(s.name, s.role) for s in result.stems]
    if len(prompts) == 1:  # exactly today's job
        assert roles == [("drums", "target"), ("drums residual", "residual")]
        assert [s.path.name for s in result.stems] == ["drums.wav", "drums-residual.wav"]
    else:
        assert roles == [*((p, "target") for p in prompts), ("rest", "residual")]
        assert result.stems[-1].path.name == "rest.wav"
    assert result.manifest["prompts"] == prompts


def test_sam_sets_of_one_to_four_prompts_sum_and_run_as_one_batch(sam_env, tmp_path):
    engine = sam_env.engine()
    mix = make_mix(tmp_path, seconds=4.0, bursts=[1.0])
    model = None
    for count in range(1, 5):
        prompts = ["bass", "mid", "hiss", "silence"][:count]
        _, stems = _run(mix.path, tmp_path / f"set{count}", prompts, engine="sam", quality="fast")
        assert np.max(np.abs(np.sum(stems, axis=0) - mix.mix)) < 1e-5
        model = engine.manager._state.loaded.model if model is None else model
        call = model.calls[-1]
        # One model call per chunk, batch size = number of prompts, in the prompts' order.
        assert call["descriptions"] == prompts
        assert sum(1 for c in model.calls if c["descriptions"] == prompts) == 1
    # The set's bass stem is the one-prompt job's bass, where no other prompt claims it.
    _, one = _run(mix.path, tmp_path / "alone", ["bass"], engine="sam", quality="fast")
    _, stems = _run(mix.path, tmp_path / "four", ["bass", "mid"], engine="sam", quality="fast")
    err = _energy(stems[0] - one[0]) / _energy(one[0])
    assert err < 1e-3


@pytest.mark.parametrize("stereo", ["mask", "mono"])
def test_overlapping_prompts_share_rather_than_double(sam_env, tmp_path, stereo):
    """mask: SAM-Audio's own joint masks (engines/sam.py); mono: the pipeline's stemsets.share."""
    sam_env.engine()
    mix = make_mix(tmp_path, seconds=3.0)
    opts = {"engine": "sam", "quality": "fast", "output": OutputOptions(stereo=stereo)}
    _, alone = _run(mix.path, tmp_path / "alone", ["bass"], **opts)
    _, both = _run(mix.path, tmp_path / "both", ["bass", "low"], **opts)
    single = _energy(alone[0])
    # "bass" and "low" claim the same band: each gets about half of it (a quarter of the energy).
    assert _energy(both[0] + both[1]) == pytest.approx(single, rel=0.1)
    assert _energy(both[0]) == pytest.approx(single / 4, rel=0.15)
    assert np.max(np.abs(both[0] + both[1] + both[2] - mix.mix)) < 1e-5


def test_spleeter_runs_its_networks_once_for_a_whole_set(tmp_path, monkeypatch):
    from reasam.engines import spleeter
    from reasam.engines.base import Prompt

    _, mix = _drum_mix(tmp_path)
    engine = engines.get("spleeter")
    prompts = [Prompt("vocals"), Prompt("drums"), Prompt("accompaniment")]
    fetch = no_spans = lambda span: None  # these prompts have no spans to fetch
    calls = []
    original = spleeter.UNet.__call__
    monkeypatch.setattr(spleeter.UNet, "__call__", lambda self, *a: (calls.append(1), original(self, *a))[1])
    singles = np.stack([engine.prepare(p, "fast", fetch, RATE).separate(mix, 0.0) for p in prompts])
    single_calls = len(calls)
    calls.clear()
    together = engine.prepare_set(prompts, "fast", no_spans, RATE).separate(mix, 0.0)
    assert len(calls) * 3 == single_calls  # both networks once, not once per prompt
    assert np.max(np.abs(together - singles)) < 1e-6  # each stem is the one-prompt job's


def test_share_masks_never_claim_more_than_the_mix():
    rng = np.random.default_rng(1)
    mix = rng.standard_normal((2, 8192)).astype(np.float32)
    estimates = np.stack([mix, mix, 0.5 * mix])  # three full claims on the same sound
    targets = stemsets.share(mix, estimates)
    assert _energy(targets.sum(axis=0)) <= _energy(mix) * 1.001
    assert _energy(targets[0]) == pytest.approx(_energy(targets[1]), rel=1e-4)


# --- which engine serves a set -----------------------------------------------------------------------


def test_embedded_engines_name_what_needs_sam(tmp_path, monkeypatch):
    monkeypatch.setattr(engines.get("sam"), "unavailable_reason", lambda: "not installed")
    assert engines.choose_set("auto", ("vocals", "drums"), ()).capabilities.name == "spleeter"
    assert engines.choose_set("auto", ("drums", "harmonic"), ()).capabilities.name == "dsp"
    with pytest.raises(ReasamError) as info:
        engines.choose_set("auto", ("vocals", "drums", "bass"), ())
    assert info.value.code == "unsupported_prompt"
    assert "'bass' needs SAM-Audio" in info.value.message and "spleeter" in info.value.message
    with pytest.raises(ReasamError, match="'bass', 'a dog barking' need SAM-Audio"):
        engines.choose_set("spleeter", ("vocals", "bass", "a dog barking"), ())


def test_cache_keys_a_set_by_all_its_prompts(tmp_path):
    path, _ = _drum_mix(tmp_path)
    cache = ResultCache(tmp_path / "cache", 1 << 30)

    def key(*prompts: str) -> str:
        return cache.key(Request(path, prompt=prompts[0], extra_prompts=prompts[1:], engine="dsp"))

    keys = {
        key("drums"),
        key("drums", "harmonic"),
        key("harmonic", "drums"),
    }
    assert len(keys) == 3
    assert key("percussion", "harmonic") == key("drums", "harmonic")  # a synonym names the same stem
    request = Request(path, prompt="drums", extra_prompts=("harmonic",), engine="dsp", quality="fast")
    result = pipeline.run(request, tmp_path / "first", "first")
    cache.store(cache.key(request), result)
    hit = cache.fetch(cache.key(request), request, "second", tmp_path / "second", lambda: False)
    assert hit is not None and [s.name for s in hit.stems] == ["drums", "harmonic", "rest"]
    assert hit.stems[0].presence == result.stems[0].presence
    for a, b in zip(hit.stems, result.stems, strict=True):
        assert np.array_equal(_read(a.path), _read(b.path))
    cache.close()


# --- presence ------------------------------------------------------------------------------------------


def test_presence_with_and_without_the_target(sam_env, tmp_path, capsys):
    sam_env.engine()
    with_bass = make_mix(tmp_path, seconds=3.0, name="with")
    t = np.arange(3 * 44_100) / 44_100
    tone = np.stack([0.2 * np.sin(2 * np.pi * 1000 * t)] * 2).astype(np.float32)
    sf.write(tmp_path / "without.wav", tone.T, 44_100, subtype="FLOAT")
    found, _ = _run(with_bass.path, tmp_path / "found", ["bass"], engine="sam", quality="fast")
    missing, _ = _run(tmp_path / "without.wav", tmp_path / "missing", ["bass"], engine="sam", quality="fast")
    assert found.manifest["stems"][0]["present"] is True
    assert found.manifest["stems"][0]["presence_db"] > stemsets.PRESENCE_THRESHOLD_DB
    assert missing.manifest["stems"][0]["present"] is False
    assert missing.manifest["stems"][0]["presence_db"] < stemsets.PRESENCE_THRESHOLD_DB
    assert "present" not in missing.manifest["stems"][1]  # the residual has no presence figure
    assert found.manifest["presence_threshold_db"] == stemsets.PRESENCE_THRESHOLD_DB
    # The CLI says so in one line, and still writes the stems.
    code = main(["separate", str(tmp_path / "without.wav"), "-p", "bass", "-p", "mid", "--engine", "sam",
                 "--quality", "fast", "--out", str(tmp_path / "cli"), "-q"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0 and len(out.splitlines()) == 3
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "nothing like 'bass' found in without.wav" in warnings[0]


def test_presence_carries_the_judge_score_when_the_judge_runs(sam_env, tmp_path):
    sam_env.engine()
    mix = make_mix(tmp_path, seconds=2.0)
    fast, _ = _run(mix.path, tmp_path / "fast", ["bass"], engine="sam", quality="fast")
    assert "judge_score" not in fast.manifest["stems"][0]  # "fast" loads no judge
    result, _ = _run(mix.path, tmp_path / "judged", ["bass", "silence"], engine="sam", quality="balanced")
    bass, silence = result.manifest["stems"][:2]
    # The double's judge scores loudness: the found bass above the silent target.
    assert bass["judge_score"] > silence["judge_score"]


# --- cancel within engine steps --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def long_file(tmp_path_factory) -> Path:
    """Three minutes of stereo: tone, clicks and a little noise."""
    folder = tmp_path_factory.mktemp("long")
    seconds = 180
    t = np.arange(seconds * RATE) / RATE
    clicks = np.zeros_like(t)
    clicks[:: RATE // 2] = 1.0
    hits = np.convolve(clicks, np.exp(-np.arange(400) / 50.0), "same")
    noise = np.random.default_rng(0).standard_normal(t.shape) * 0.01
    mono = (0.2 * np.sin(2 * np.pi * 220 * t) + 0.4 * hits + noise).astype(np.float32)
    path = folder / "long.wav"
    sf.write(path, np.stack([mono, mono]).T, RATE, subtype="PCM_16")
    return path


def cancel_running_job(tmp_path: Path, request: Request, after: float = 0.5) -> dict:
    """Run `request` in a JobManager, cancel it `after` seconds into its first chunk; returns
    the last progress fraction, the cancel latency and the final status."""
    manager = JobManager(tmp_path / "journal.sqlite3")
    events: list = []
    preparing = threading.Event()
    ended = threading.Event()

    def listen(event) -> None:
        events.append((time.monotonic(), event))
        if event.status["stage"] == "preparing":
            preparing.set()
        if event.kind in ("done", "error", "cancelled"):
            ended.set()

    manager.subscribe(listen)
    manager.start()
    try:
        manager.submit("long", request, tmp_path / "out", Priority.OSC)
        assert preparing.wait(120), "the job never started"
        time.sleep(after)
        asked = time.monotonic()
        manager.cancel("long")
        assert ended.wait(120), "the job did not end after its cancel"
    finally:
        manager.shutdown(grace=1.0)
    final_time, final = events[-1]
    progress = [e.status["fraction"] for _, e in events if e.kind == "progress"]
    return {
        "kind": final.kind,
        "latency": final_time - asked,
        "fraction": max(progress),
        "status": final.status,
    }


@pytest.mark.parametrize("engine, prompt", [("dsp", "drums"), ("spleeter", "vocals"), ("spleeter", "drums")])
def test_cancel_lands_inside_the_first_chunk(tmp_path, long_file, engine, prompt):
    """The job asks `cancelled()` at each chunk boundary and, through the engine's checkpoint,
    between its steps. Saying yes at the first question after the first chunk began must stop
    the job before that chunk is done: no "separating" progress, nothing written."""
    asked = []
    stages = []

    def cancelled() -> bool:
        asked.append(len(stages))
        return len(asked) >= 2  # the first question is the chunk boundary before chunk 1

    request = Request(long_file, prompt=prompt, engine=engine, quality="balanced")
    with pytest.raises(JobCancelled):
        pipeline.run(request, tmp_path / "out", "long", lambda f, stage: stages.append(stage), cancelled)
    assert "separating" not in stages and stages[-1] == "preparing"
    assert not list((tmp_path / "out").glob("*.wav"))


def test_cancel_of_a_running_job_reaches_cancelled(tmp_path, long_file):
    outcome = cancel_running_job(tmp_path, Request(long_file, prompt="drums", engine="dsp"))
    assert outcome["kind"] == "cancelled" and outcome["latency"] < 30  # the figure: bench/stem_sets.py
    assert not list((tmp_path / "out" / "long").glob("*.wav"))


def test_cancel_stops_a_sam_call_between_model_evaluations(sam_env, tmp_path, long_file):
    from sam_audio.testing import write_model_dir

    folder = write_model_dir(tmp_path / "slow", "base", rtf=1.0)  # 15 s per 30 s chunk at "fast"
    engine = sam_env.engine(model_path=folder)
    request = Request(long_file, prompt="bass", extra_prompts=("mid",), engine="sam", quality="fast")
    outcome = cancel_running_job(tmp_path, request, after=1.0)
    assert outcome["kind"] == "cancelled" and outcome["latency"] < 30
    model = engine.manager._state.loaded.model
    assert model.calls == []  # the first call was stopped inside, not after it
    # The model stays loaded and serves the next job without a reload.
    mix = make_mix(tmp_path, seconds=1.0)
    result, _ = _run(mix.path, tmp_path / "after", ["everything"], engine="sam", quality="fast")
    assert result.manifest["engine"] == "sam" and engine.manager.state()["loads"] == 1


# --- front doors: OSC, reasam send, CSV batches --------------------------------------------------------


def test_osc_prompt_keys_send_and_csv_rows_make_sets(tmp_path):
    from .test_batch import run_batch, summary, write_manifest
    from .test_daemon import Daemon, collect, final_for

    path, mix = _drum_mix(tmp_path, name="loop")
    d = Daemon(tmp_path / "d").start()
    try:
        with d.client() as client:
            # OSC: the prompt argument plus repeatable `prompt` keys.
            client.send("/reasam/separate", "osc-set", str(path), "drums", "prompt", "harmonic",
                        "engine", "dsp", *client.auth())  # fmt: skip
            address, reply = collect(client, final_for("osc-set"), timeout=120)[-1]
            assert address == "/reasam/done", reply
            manifest = json.loads(Path(reply[1]).read_text())
            assert [(s["name"], s["role"]) for s in manifest["stems"]] == [
                ("drums", "target"), ("harmonic", "target"), ("rest", "residual")
            ]  # fmt: skip
            assert manifest["request"]["prompts"] == ["drums", "harmonic"]
            total = sum(_read(Path(s["path"])) for s in manifest["stems"])
            assert np.max(np.abs(total - mix)) < 1e-5
            # A prompt key that is not text is refused like any other bad value.
            client.send("/reasam/separate", "osc-bad", str(path), "drums", "prompt", 3, *client.auth())
            address, reply = collect(client, final_for("osc-bad"), timeout=30)[-1]
            assert address == "/reasam/error" and reply[1] == "bad_request"
        # reasam send: -p repeatable.
        res = d.cli("send", str(path), "-p", "drums", "-p", "harmonic", "--engine", "dsp", "-q")
        assert res.returncode == 0, res.stderr
        sent = json.loads(Path(json.loads(res.stdout)["manifest_path"]).read_text())
        assert [s["name"] for s in sent["stems"]] == ["drums", "harmonic", "rest"]
        # CSV: `;`-separated prompts in a row's prompt cell, via the daemon and in process.
        rows = [{"input": path.name, "prompt": "drums; harmonic", "engine": "dsp"}]
        csv_file = write_manifest(tmp_path / "m.csv", rows)
        flags = ("--via-daemon", "--port", str(d.port), "--token-file", str(d.token_file))
        for out, extra in ((tmp_path / "via", flags), (tmp_path / "local", ())):
            res = run_batch(tmp_path, csv_file, out, *extra)
            assert res.returncode == 0, res.stderr
            folder = Path(summary(out)["lines"][0]["folder"])
            body = json.loads((folder / "manifest.json").read_text())
            assert [s["name"] for s in body["stems"]] == ["drums", "harmonic", "rest"]
            total = sum(_read(folder / Path(s["path"]).name) for s in body["stems"])
            assert np.max(np.abs(total - mix)) < 1e-5
    finally:
        d.stop()


def test_presence_finds_a_short_sound_in_a_long_region(sam_env, tmp_path):
    """A 1 s sound in 60 s of background is far below the whole region (about -32 dB) but loud
    in its own second: presence is measured per block, so it is found; without it, not."""
    sam_env.engine()
    seconds = 60
    t = np.arange(seconds * RATE) / RATE
    tone = 0.2 * np.sin(2 * np.pi * 1000 * t)
    bass = np.zeros_like(t)
    burst = slice(30 * RATE, 31 * RATE)
    bass[burst] = 0.04 * np.sin(2 * np.pi * 80 * t[burst])
    whole_db = 10 * np.log10(np.square(bass).sum() / np.square(tone + bass).sum())
    assert whole_db < stemsets.PRESENCE_THRESHOLD_DB  # the region-wide figure would miss it
    sf.write(tmp_path / "burst.wav", np.stack([tone + bass] * 2).T.astype(np.float32), RATE, subtype="FLOAT")
    sf.write(tmp_path / "plain.wav", np.stack([tone] * 2).T.astype(np.float32), RATE, subtype="FLOAT")
    found, _ = _run(tmp_path / "burst.wav", tmp_path / "found", ["bass"], engine="sam", quality="fast")
    missing, _ = _run(tmp_path / "plain.wav", tmp_path / "missing", ["bass"], engine="sam", quality="fast")
    assert found.manifest["stems"][0]["present"] is True
    assert found.manifest["stems"][0]["presence_db"] > -20
    assert missing.manifest["stems"][0]["present"] is False


def test_presence_blocks_do_not_depend_on_chunk_boundaries():
    rng = np.random.default_rng(3)
    mix = rng.standard_normal((2, 10 * 1000)).astype(np.float32)
    target = np.zeros_like(mix)
    target[:, 4000:5000] = mix[:, 4000:5000]  # all of the mix in one block of ten
    whole, pieces = stemsets.Presence.of(1, 1000), stemsets.Presence.of(1, 1000)
    whole.add(mix, [target])
    for start, end in [(0, 333), (333, 4500), (4500, 4501), (4501, 10_000)]:
        pieces.add(mix[:, start:end], [target[:, start:end]])
    assert whole.report(0) == pieces.report(0)
    assert whole.report(0)["presence_db"] == pytest.approx(0.0, abs=0.01)
    assert whole.report(0)["present"] is True


def _two_sources(n: int = 44_100) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    a = 0.3 * rng.standard_normal((2, n))
    b = 0.2 * rng.standard_normal((2, n))
    return a.astype(np.float32), b.astype(np.float32)


def test_share_gives_disjoint_prompts_the_whole_mix():
    """Two sources that make up the mix, each estimated exactly: nothing is left to the rest
    (a single residual |X - E_i| would count the other prompt's sound as unclaimed)."""
    a, b = _two_sources()
    mix = a + b
    targets = stemsets.share(mix, np.stack([a, b]))
    rest = mix - targets.sum(axis=0)
    assert _energy(rest) < 1e-6 * _energy(mix)
    # Identical claims still share rather than double; one claim is its own ratio mask.
    halves = stemsets.share(mix, np.stack([mix, mix]))
    assert np.max(np.abs(halves[0] - 0.5 * mix)) < 1e-4


def test_sam_masks_give_disjoint_prompts_the_whole_mix():
    from reasam.engines import sam

    a, b = (torch.from_numpy(x) for x in _two_sources())
    mix = a + b
    mono = [a.mean(dim=0), b.mean(dim=0)]
    m = mix.mean(dim=0)
    out = sam.ratio_mask_stems(mix, torch.stack(mono), torch.stack([m - mono[0], m - mono[1]]))
    rest = mix - out.reshape(2, 2, -1).sum(dim=0)
    assert float(rest.square().sum()) < 1e-6 * float(mix.square().sum())
    # One prompt: the plain ratio mask |T|^2 / (|T|^2 + |R|^2), as before sets existed.
    window = torch.hann_window(sam.MASK_FFT)
    spec = torch.stft(torch.cat([mix, mono[0][None], (m - mono[0])[None]]), sam.MASK_FFT, sam.MASK_HOP,
                      window=window, center=True, return_complex=True)  # fmt: skip
    t, r = spec[2].abs().square(), spec[3].abs().square()
    expected = torch.istft(spec[:2] * (t / (t + r + sam.MASK_EPS)), sam.MASK_FFT, sam.MASK_HOP,
                           window=window, center=True, length=mix.shape[-1])  # fmt: skip
    one = sam.ratio_mask_stems(mix, mono[0], m - mono[0])
    assert torch.max(torch.abs(one - expected)) < 1e-6


@pytest.mark.parametrize(
    ("engine", "prompts"), [("dsp", ["drums", "percussion"]), ("spleeter", ["vocals", "Voice"])]
)
def test_a_set_naming_one_stem_twice_is_refused(sam_env, tmp_path, engine, prompts):
    sam_env.engine()
    path, _ = _drum_mix(tmp_path)
    with pytest.raises(ReasamError) as info:
        _run(path, tmp_path / "out", prompts, engine=engine, quality="fast")
    assert info.value.code == "bad_request" and "name the same stem" in info.value.message
    assert "\n" not in info.value.message
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    # SAM-Audio reads them as two texts: the same set is fine there.
    assert engines.choose_set("sam", tuple(prompts), ()).capabilities.name == "sam"


def test_the_judge_scores_once_per_chunk_and_never_fails_the_job(sam_env, tmp_path, monkeypatch, caplog):
    """The judge score runs in the qualities that rank candidates only, once per chunk, outside
    the out-of-memory fallback: a judge out of memory drops the score, not the job."""
    from reasam import models

    sam_env.engine()
    mix = make_mix(tmp_path, seconds=2.0)
    judged: list[int] = []
    fail = False
    original = models.JudgeRanker.forward

    def forward(self, extracted_audio, input_audio, descriptions, sample_rate=48_000, **kwargs):
        if extracted_audio[0].shape[0] == 1:  # a score (one candidate), not a ranking
            judged.append(len(descriptions))
            if fail:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB (judge)")
        return original(self, extracted_audio, input_audio, descriptions, sample_rate, **kwargs)

    monkeypatch.setattr(models.JudgeRanker, "forward", forward)
    first, stems = _run(mix.path, tmp_path / "judged", ["bass", "silence"], engine="sam", quality="balanced")
    assert judged == [2] and "judge_score" in first.manifest["stems"][0]
    # A fast job on the warm model, which holds the judge from the job before: no judge pass.
    fast, _ = _run(mix.path, tmp_path / "fast", ["bass"], engine="sam", quality="fast")
    assert judged == [2] and "judge_score" not in fast.manifest["stems"][0]
    fail = True
    with caplog.at_level("WARNING", logger="reasam"):
        failed, again = _run(
            mix.path, tmp_path / "failed", ["bass", "silence"], engine="sam", quality="balanced"
        )
    assert "judge_score" not in failed.manifest["stems"][0]
    assert failed.manifest["stems"][0]["present"] is True
    for a, b in zip(stems, again, strict=True):
        assert np.array_equal(a, b)  # the separation is the judged job's, not halved pieces
    assert sum("judge failed" in r.getMessage() for r in caplog.records) == 1


def test_a_set_out_of_memory_advises_fewer_prompts(sam_env, tmp_path):
    """Shorter pieces never split a set's batch of prompts: when 5 s pieces of three prompts do
    not fit, the error says to ask for fewer prompts (a one-prompt job is not told so)."""
    from sam_audio.testing import write_model_dir

    folder = write_model_dir(tmp_path / "oom", "base", oom_above_seconds=12.0)
    sam_env.engine(model_path=folder, chunk_seconds=20.0, overlap_seconds=1.0)
    mix = make_mix(tmp_path, seconds=12.0)
    with pytest.raises(ReasamError) as info:
        _run(mix.path, tmp_path / "set", ["bass", "low", "mid"], engine="sam", quality="fast")
    assert info.value.code == "out_of_memory" and "fewer prompts" in info.value.message
    single, _ = _run(mix.path, tmp_path / "single", ["bass"], engine="sam", quality="fast")
    assert single.stems[0].presence["present"] is True  # 5 s pieces of one prompt fit
