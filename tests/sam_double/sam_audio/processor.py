"""Test double of `sam_audio.processor` (upstream sam_audio/processor.py, commit 68b48d4).

As upstream: `from_pretrained` reads only config.json (a local folder, else the hub via
`hf_hub_download` at the class's `revision`); calling the processor pads the audios into one
(B, 1, T) tensor after a mono downmix (`wav.mean(0)`, so a 1-D tensor is mishandled exactly as
upstream mishandles it); tensors are NOT resampled, paths are; `sizes` (frames per item) is
`torch.ceil(wav_sizes / hop)`, a FLOAT tensor; anchors become per-frame alignment indices with
the upstream rounding (ceil of seconds * rate / hop, for start and end alike);
`Batch.process_anchors` replaces the anchors of a batch in place (span prediction uses it);
`Batch.to(device)` moves tensors and never changes their dtype.

`SAMAudioJudgeProcessor` (revision "sam_audio") also loads the judge's tokenizer from the same
folder (upstream: `AutoTokenizer.from_pretrained`; here: the folder must hold
tokenizer_config.json) and turns text, input audio and separated audio into the judge's
`input_ids`, `input_values`, `separated_values` and `padding_mask`.
"""

from __future__ import annotations

import json
import math
import os

import torch
from torch.nn.utils.rnn import pad_sequence

ANCHOR_IDS = {"<null>": 0, "+": 1, "-": 2, "<pad>": 3}


def _hop(config: dict) -> int:
    rates = config.get("audio_codec", {}).get("encoder_rates", [2, 8, 10, 12])
    return int(math.prod(rates))


def _rate(config: dict) -> int:
    return int(config.get("audio_codec", {}).get("sample_rate", 48_000))


def read_config(model_name_or_path: str, revision: str | None = None) -> dict:
    if os.path.exists(model_name_or_path):
        path = os.path.join(model_name_or_path, "config.json")
    else:
        from .model import hub_fetch

        path = hub_fetch(model_name_or_path, revision=revision, filename="config.json")
    with open(path) as fin:
        return json.load(fin)


def _load_file(path: str, rate: int) -> torch.Tensor:
    import soundfile as sf
    import soxr

    data, sr = sf.read(path, dtype="float32", always_2d=True)
    if sr != rate:
        data = soxr.resample(data, sr, rate)
    return torch.from_numpy(data.T.copy())


def batch_audio(audios: list, rate: int) -> tuple[torch.Tensor, torch.Tensor]:
    wavs = []
    for audio in audios:
        wav = _load_file(audio, rate) if isinstance(audio, str) else audio
        wavs.append(wav.mean(0))  # (channels, samples) -> (samples,); a 1-D input becomes a scalar
    sizes = torch.tensor([wav.size(-1) for wav in wavs])
    return pad_sequence(wavs, batch_first=True).unsqueeze(1), sizes


class Batch:
    def __init__(
        self,
        audios: torch.Tensor,
        sizes: torch.Tensor,
        wav_sizes: torch.Tensor,
        descriptions: list[str],
        hop_length: int,
        audio_sampling_rate: int,
        anchors: list | None = None,
        audio_pad_mask: torch.Tensor | None = None,
        masked_video=None,
    ) -> None:
        self.audios = audios
        self.sizes = sizes
        self.wav_sizes = wav_sizes
        self.descriptions = descriptions
        self.audio_pad_mask = audio_pad_mask
        self.masked_video = masked_video
        self.hop_length = hop_length
        self.audio_sampling_rate = audio_sampling_rate
        self.process_anchors(anchors)
        assert self.audios.size(0) == len(self.descriptions)

    def _wav_to_feature_idx(self, wav_idx: float) -> int:
        return math.ceil(wav_idx / self.hop_length)

    def to(self, device) -> Batch:
        self.audios = self.audios.to(device)
        self.anchor_ids = self.anchor_ids.to(device)
        self.anchor_alignment = self.anchor_alignment.to(device)
        self.sizes = self.sizes.to(device)
        self.wav_sizes = self.wav_sizes.to(device)
        if self.audio_pad_mask is not None:
            self.audio_pad_mask = self.audio_pad_mask.to(device)
        if self.masked_video is not None:
            self.masked_video = [v.to(device) for v in self.masked_video]
        return self

    def process_anchors(self, anchors: list | None) -> None:
        batch_size = len(self.audios)
        alignment = torch.zeros((batch_size, self.audio_pad_mask.size(-1)), dtype=torch.long)
        alignment[~self.audio_pad_mask] = 1  # points at the pad token
        if anchors is None:
            anchor_ids = torch.full((batch_size, 2), ANCHOR_IDS["<null>"], dtype=torch.long)
            anchor_ids[:, 1] = ANCHOR_IDS["<pad>"]
        else:
            ids = []
            for i, anchor_list in enumerate(anchors):
                current = [ANCHOR_IDS["<null>"], ANCHOR_IDS["<pad>"]]
                for token, start_time, end_time in anchor_list:
                    start_idx = self._wav_to_feature_idx(start_time * self.audio_sampling_rate)
                    end_idx = self._wav_to_feature_idx(end_time * self.audio_sampling_rate)
                    alignment[i, start_idx:end_idx] = len(current)
                    current.append(ANCHOR_IDS[token])
                ids.append(torch.tensor(current))
            anchor_ids = pad_sequence(ids, batch_first=True, padding_value=ANCHOR_IDS["<pad>"])
        self.anchor_ids = anchor_ids.to(self.audios.device)
        self.anchor_alignment = alignment.to(self.audios.device)
        self.anchors = anchors


class SAMAudioProcessor:
    revision: str | None = None

    def __init__(self, audio_hop_length: int, audio_sampling_rate: int) -> None:
        self.audio_hop_length = audio_hop_length
        self.audio_sampling_rate = audio_sampling_rate

    @classmethod
    def from_pretrained(cls, model_name_or_path: str) -> SAMAudioProcessor:
        config = read_config(model_name_or_path, cls.revision)
        return cls(audio_hop_length=_hop(config), audio_sampling_rate=_rate(config))

    def wav_to_feature_idx(self, wav_idx):
        ceil = torch.ceil if torch.is_tensor(wav_idx) else math.ceil
        return ceil(wav_idx / self.audio_hop_length)

    def feature_to_wav_idx(self, feature_idx):
        return feature_idx * self.audio_hop_length

    def __call__(
        self, descriptions: list[str], audios: list, anchors: list | None = None, masked_videos=None
    ):
        assert len(descriptions) == len(audios)
        assert anchors is None or len(descriptions) == len(anchors)
        audio, wav_sizes = batch_audio(audios, self.audio_sampling_rate)
        sizes = self.wav_to_feature_idx(wav_sizes)  # float: torch.ceil of a true division
        pad_mask = torch.arange(sizes.max()).expand(len(sizes), -1) < sizes.unsqueeze(1)
        return Batch(
            audios=audio,
            sizes=sizes,
            wav_sizes=wav_sizes,
            descriptions=list(descriptions),
            hop_length=self.audio_hop_length,
            audio_sampling_rate=self.audio_sampling_rate,
            anchors=anchors,
            audio_pad_mask=pad_mask,
        )


class JudgeFeatures(dict):
    """transformers' BatchFeature, as far as the judge ranker uses it: a dict with `.to()`."""

    def to(self, device) -> JudgeFeatures:
        return JudgeFeatures({k: v.to(device) for k, v in self.items()})


class SAMAudioJudgeProcessor(SAMAudioProcessor):
    revision = "sam_audio"

    def __init__(self, audio_hop_length: int, audio_sampling_rate: int, tokenizer: str) -> None:
        super().__init__(audio_hop_length, audio_sampling_rate)
        self.tokenizer = tokenizer

    @classmethod
    def from_pretrained(cls, model_name_or_path: str) -> SAMAudioJudgeProcessor:
        config = read_config(model_name_or_path, cls.revision)
        if not os.path.isfile(os.path.join(model_name_or_path, "tokenizer_config.json")):
            raise OSError(f"Can't load tokenizer for '{model_name_or_path}'.")
        return cls(_hop(config), _rate(config), tokenizer=model_name_or_path)

    def _pad(self, wavs: list) -> tuple[torch.Tensor, torch.Tensor]:
        wavs = [w.reshape(-1) for w in wavs]
        lengths = torch.tensor([w.numel() for w in wavs])
        padded = pad_sequence(wavs, batch_first=True).unsqueeze(1)
        return padded, torch.arange(int(lengths.max()))[None] < lengths[:, None]

    def __call__(self, text=None, input_audio=None, separated_audio=None, sampling_rate=None, **_):
        if sampling_rate is not None and sampling_rate != self.audio_sampling_rate:
            raise ValueError(f"expected {self.audio_sampling_rate} Hz, got {sampling_rate}")
        out = JudgeFeatures()
        if text is not None:
            out["input_ids"] = torch.tensor([[len(t)] for t in text])
            out["attention_mask"] = torch.ones(len(text), 1, dtype=torch.long)
        if input_audio is not None:
            out["input_values"], out["padding_mask"] = self._pad(input_audio)
        if separated_audio is not None:
            out["separated_values"], _ = self._pad(separated_audio)
        return out


__all__ = ["Batch", "SAMAudioJudgeProcessor", "SAMAudioProcessor"]
