"""Real bytes: a coding session that turns frames into a range-coded bitstream and back.

The encoder side runs the network's encoder and quantiser; the integer codes are
entropy coded with constriction's range coder under a per-channel adaptive histogram.
The decoder side rebuilds that histogram from the symbols it has decoded so far, so
nothing but the bytes and the network's weights crosses. With `temporal` (the
default) each symbol is a code's change from the previous frame's code at the same
position, modulo the alphabet: on a stream where most of the screen repeats, nearly
every symbol is 0 and costs a small fraction of a bit. The reconstruction is the
decoder's output on the decoded codes, so encoder and decoder agree on it bit for bit
on a CPU.
"""

import constriction
import numpy as np
import torch

from model import AutoEncoder
from utils import preprocess_frame

COUNT_LIMIT = 1 << 16  # a channel's counts are halved past this total, so the histogram tracks a drifting stream


class AdaptiveHistogram:
    """Symbol counts per channel, starting at one each, updated after every frame.

    Encoder and decoder make the same integer updates, so their probability tables
    agree exactly.
    """

    def __init__(self, channels: int, alphabet: int):
        self.counts = np.ones((channels, alphabet), dtype=np.int64)

    def probabilities(self, channel: int) -> np.ndarray:
        counts = self.counts[channel]
        return counts / counts.sum()

    def update(self, channel: int, symbols: np.ndarray) -> None:
        counts = self.counts[channel]
        counts += np.bincount(symbols, minlength=counts.size)
        if counts.sum() > COUNT_LIMIT:
            counts[:] = (counts + 1) // 2


class LatentCodec:
    """One coding session: `encode(frame) -> (bytes, reconstruction)`, `decode(bytes) ->
    reconstruction`.

    A session keeps the histogram and, with `temporal`, the previous frame's codes, so
    one session encodes a stream and another decodes that stream's bitstreams in the
    same order. `estimated_bits` is the last frame's ideal code length, the sum of
    -log2 p over its symbols under the model it was coded with. Coding leaves the
    network untouched (no gradient, no state).
    """

    def __init__(self, network: AutoEncoder, temporal: bool = True,
                 memory_format: torch.memory_format = torch.contiguous_format):
        bits = network.config.latent_bits
        if not bits:
            raise ValueError("float latents (latent_bits=0) have no codes to entropy code")
        self.network = network
        self.device = next(network.parameters()).device
        self.memory_format = memory_format
        self.temporal = temporal
        self.alphabet = 2**bits
        self.shapes = network.config.latent_shapes()
        sizes = [h * w for c, h, w in self.shapes for _ in range(c)]
        self.histogram = AdaptiveHistogram(len(sizes), self.alphabet)
        self.previous = [np.full(n, self.alphabet // 2, dtype=np.int64) for n in sizes]
        self.estimated_bits = 0.0

    @torch.no_grad()
    def encode(self, frame: np.ndarray | torch.Tensor) -> tuple[bytes, torch.Tensor]:
        x = preprocess_frame(frame, self.device).contiguous(memory_format=self.memory_format)
        channels = [c.reshape(-1).cpu().numpy() for codes in self.network.codes(x) for c in codes[0]]
        coder = constriction.stream.queue.RangeEncoder()
        self.estimated_bits = 0.0
        for index, codes in enumerate(channels):
            symbols = (codes - self.previous[index]) % self.alphabet if self.temporal else codes
            probabilities = self.histogram.probabilities(index)
            self.estimated_bits -= float(np.log2(probabilities[symbols]).sum())
            coder.encode(symbols.astype(np.int32), constriction.stream.model.Categorical(probabilities, perfect=False))
            self._advance(index, symbols, codes)
        return coder.get_compressed().tobytes(), self._reconstruct(channels)

    @torch.no_grad()
    def decode(self, data: bytes) -> torch.Tensor:
        coder = constriction.stream.queue.RangeDecoder(np.frombuffer(data, dtype=np.uint32))
        channels = []
        for index, previous in enumerate(self.previous):
            model = constriction.stream.model.Categorical(self.histogram.probabilities(index), perfect=False)
            symbols = coder.decode(model, previous.size).astype(np.int64)
            codes = (previous + symbols) % self.alphabet if self.temporal else symbols
            self._advance(index, symbols, codes)
            channels.append(codes)
        return self._reconstruct(channels)

    def _advance(self, index: int, symbols: np.ndarray, codes: np.ndarray) -> None:
        self.histogram.update(index, symbols)
        self.previous[index] = codes

    def _reconstruct(self, channels: list[np.ndarray]) -> torch.Tensor:
        codes, start = [], 0
        for c, h, w in self.shapes:
            branch = np.stack(channels[start:start + c]).reshape(1, c, h, w)
            codes.append(torch.from_numpy(branch).to(self.device))
            start += c
        return self.network.decode_codes(codes)
