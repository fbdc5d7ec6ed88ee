"""Real bytes: a coding session that turns frames into a range-coded bitstream and back.

The encoder side runs the network's encoder and quantiser; the integer codes are
entropy coded with constriction's range coder under adaptive histograms, one per
channel and context. The decoder side rebuilds them from the symbols it has decoded, so
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

COUNT_STEP = 16  # added per symbol seen, against a prior count of 1: the histogram learns fast from few frames
COUNT_LIMIT = 1 << 20  # a table's counts are halved past this total, so it tracks a drifting stream
# A symbol's context: 2 if its code changed in the previous frame, else 1 if a code in the
# 3x3 around it did, else 0; plus 3 if the branch's previous channel changed there in this frame.
CONTEXTS = 6


class AdaptiveHistogram:
    """Symbol counts per channel and context, updated after every frame.

    Encoder and decoder make the same integer updates, so their probability tables
    agree exactly.
    """

    def __init__(self, channels: int, contexts: int, alphabet: int):
        self.counts = np.ones((channels, contexts, alphabet), dtype=np.int64)

    def probabilities(self, channel: int, contexts: np.ndarray) -> np.ndarray:
        """One row of probabilities per symbol, from its context."""
        tables = self.counts[channel]
        return (tables / tables.sum(axis=1, keepdims=True))[contexts]

    def update(self, channel: int, contexts: np.ndarray, symbols: np.ndarray) -> None:
        tables = self.counts[channel]
        alphabet = tables.shape[1]
        tables += COUNT_STEP * np.bincount(contexts * alphabet + symbols, minlength=tables.size).reshape(tables.shape)
        full = tables.sum(axis=1) > COUNT_LIMIT
        tables[full] = (tables[full] + 1) // 2


def dilate(mask: np.ndarray) -> np.ndarray:
    """True where `mask` (H, W) is true anywhere in the 3x3 neighbourhood."""
    padded = np.pad(mask, 1)
    h, w = mask.shape
    return np.logical_or.reduce([padded[i : i + h, j : j + w] for i in range(3) for j in range(3)])


class LatentCodec:
    """One coding session: `encode(frame) -> (bytes, reconstruction)`, `decode(bytes) ->
    reconstruction`.

    A session keeps the histograms and, with `temporal`, the previous frame's codes and
    where they changed, so one session encodes a stream and another decodes that
    stream's bitstreams in the same order. A symbol's context is whether its code, or
    one in the 3x3 around it, changed in the previous frame, and whether the branch's
    previous channel changed at its position in this frame: all known to the decoder
    before it decodes the symbol. `estimated_bits` is the last frame's ideal code length, the sum of
    -log2 p over its symbols under the model it was coded with. Coding leaves the
    network untouched (no gradient, no state).
    """

    def __init__(
        self, network: AutoEncoder, temporal: bool = True, memory_format: torch.memory_format = torch.contiguous_format
    ):
        bits = network.config.latent_bits
        if not bits:
            raise ValueError("float latents (latent_bits=0) have no codes to entropy code")
        self.network = network
        self.device = next(network.parameters()).device
        self.memory_format = memory_format
        self.temporal = temporal
        self.alphabet = 2**bits
        self.shapes = network.config.latent_shapes()
        self.histogram = AdaptiveHistogram(
            sum(c for c, _, _ in self.shapes), CONTEXTS if temporal else 1, self.alphabet
        )
        self.previous = [np.full(shape, self.alphabet // 2, dtype=np.int64) for shape in self.shapes]
        self.changed = [np.zeros(shape, dtype=bool) for shape in self.shapes]
        self.estimated_bits = 0.0

    @torch.no_grad()
    def encode(self, frame: np.ndarray | torch.Tensor) -> tuple[bytes, torch.Tensor]:
        x = preprocess_frame(frame, self.device).contiguous(memory_format=self.memory_format)
        branches = [codes[0].cpu().numpy() for codes in self.network.codes(x)]
        coder = constriction.stream.queue.RangeEncoder()
        self.estimated_bits = 0.0
        channel = 0
        for branch, codes in enumerate(branches):
            for c in range(codes.shape[0]):
                contexts = self._contexts(branch, c)
                symbols = ((codes[c] - self.previous[branch][c]) % self.alphabet if self.temporal else codes[c]).ravel()
                probabilities = self.histogram.probabilities(channel, contexts)
                self.estimated_bits -= float(np.log2(probabilities[np.arange(symbols.size), symbols]).sum())
                coder.encode(
                    symbols.astype(np.int32), constriction.stream.model.Categorical(perfect=False), probabilities
                )
                self._advance(branch, c, channel, contexts, symbols, codes[c])
                channel += 1
        return coder.get_compressed().tobytes(), self._reconstruct()

    @torch.no_grad()
    def decode(self, data: bytes) -> torch.Tensor:
        coder = constriction.stream.queue.RangeDecoder(np.frombuffer(data, dtype=np.uint32))
        channel = 0
        for branch, shape in enumerate(self.shapes):
            for c in range(shape[0]):
                contexts = self._contexts(branch, c)
                probabilities = self.histogram.probabilities(channel, contexts)
                symbols = coder.decode(constriction.stream.model.Categorical(perfect=False), probabilities).astype(
                    np.int64
                )
                previous = self.previous[branch][c]
                codes = (
                    (previous + symbols.reshape(previous.shape)) % self.alphabet
                    if self.temporal
                    else symbols.reshape(previous.shape)
                )
                self._advance(branch, c, channel, contexts, symbols, codes)
                channel += 1
        return self._reconstruct()

    def _contexts(self, branch: int, c: int) -> np.ndarray:
        """Each position's context in channel `c` of `branch` (all 0 without temporal coding)."""
        changed = self.changed[branch]
        if not self.temporal:
            return np.zeros(changed[c].size, dtype=np.int64)
        sibling = changed[c - 1] if c > 0 else np.zeros_like(changed[c])  # already this frame's
        return (dilate(changed[c]).astype(np.int64) + changed[c] + 3 * sibling).ravel()

    def _advance(
        self, branch: int, c: int, channel: int, contexts: np.ndarray, symbols: np.ndarray, codes: np.ndarray
    ) -> None:
        self.histogram.update(channel, contexts, symbols)
        self.changed[branch][c] = codes != self.previous[branch][c]
        self.previous[branch][c] = codes

    def _reconstruct(self) -> torch.Tensor:
        codes = [torch.from_numpy(p[None].copy()).to(self.device) for p in self.previous]
        return self.network.decode_codes(codes)
