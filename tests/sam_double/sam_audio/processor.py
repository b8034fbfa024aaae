"""Test double of `sam_audio.processor`: `SAMAudioProcessor` and `Batch`, as documented upstream.

Follows ../shared/docs/sam-audio.md and the upstream processor: `from_pretrained` reads only
config.json (a local folder, else the hub via `hf_hub_download`); calling the processor pads the
audios into one (B, 1, T) tensor after a mono downmix (`wav.mean(0)`, so a 1-D tensor is
mishandled exactly as upstream mishandles it); tensors are NOT resampled, paths are; anchors
become per-frame alignment indices with the upstream rounding (ceil of seconds * rate / hop, for
start and end alike); `Batch.to(device)` moves tensors and never changes their dtype.
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


def read_config(model_name_or_path: str) -> dict:
    if os.path.exists(model_name_or_path):
        path = os.path.join(model_name_or_path, "config.json")
    else:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(repo_id=model_name_or_path, filename="config.json")
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
    def __init__(self, audio_hop_length: int, audio_sampling_rate: int) -> None:
        self.audio_hop_length = audio_hop_length
        self.audio_sampling_rate = audio_sampling_rate

    @classmethod
    def from_pretrained(cls, model_name_or_path: str) -> SAMAudioProcessor:
        config = read_config(model_name_or_path)
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
        sizes = self.wav_to_feature_idx(wav_sizes).long()
        pad_mask = torch.arange(int(sizes.max())).expand(len(sizes), -1) < sizes.unsqueeze(1)
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


__all__ = ["Batch", "SAMAudioProcessor"]
