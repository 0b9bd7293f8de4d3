"""Counter-based randomness: every draw is a pure function of ``(seed, epoch, sample, stream)``.

A view of sample ``i`` in epoch ``e`` must not depend on the batch it falls in, the batch size,
the number of processes or workers, or what ran before it. So augmentation parameters are not
drawn from a stateful generator but computed by hashing their coordinates: the ``j``-th number
of draw ``stream`` for sample ``i`` in epoch ``e`` of a run seeded ``seed`` is
``hash(seed, e, stream, i, j)``. :class:`SampleKeys` does this for a whole batch at once, on the
batch's device; :func:`epoch_permutation` orders an epoch the same way.

The hash is an integer finaliser in the style of Chris Wellons' ``lowbias32`` (xorshift and
multiply rounds, multipliers below ``2**31``; see :func:`mix32`): a chain of xor-then-mix steps
over ``(seed, epoch, index)`` per sample, another over ``(stream, j)`` per draw (host-side,
cached), and one final mix of the two, computed on int64 tensors holding 32-bit values; the two
chains are salted apart, so no structured pair of coordinates cancels out.
torch exposes no keyed per-element generator (its Philox offsets are per call, not per
element), hence this small hand-written one; no int64 intermediate overflows, so the result
is exact and identical on every device.
"""

from __future__ import annotations

from typing import overload

import torch
from torch import Tensor

__all__ = ["SampleKeys", "epoch_permutation", "mix32", "sample_seed"]

_MASK32 = 0xFFFFFFFF
_C1 = 0x21F0AAAD
_C2 = 0x735A2D97
#: Separates the data-order stream from augmentation streams.
_ORDER_STREAM = 0x6F72646B
#: Makes the stream-and-counter chain independent of the sample chain.
_STREAM_SALT = 0x5BD1E995


@overload
def mix32(x: int) -> int: ...
@overload
def mix32(x: Tensor) -> Tensor: ...
def mix32(x: int | Tensor) -> int | Tensor:
    """Bijective 32-bit mixing of values in ``[0, 2**32)``: xorshift-multiply rounds.

    The multipliers are odd and below ``2**31``, so on int64 tensors no product exceeds
    ``2**63`` (exact, no overflow on any device) and each round is a bijection mod ``2**32``.

    Args:
        x: A Python int or an int64 tensor of any shape, values in ``[0, 2**32)``.

    Returns:
        Same type and shape, values in ``[0, 2**32)``.
    """
    if isinstance(x, Tensor):
        x = x ^ (x >> 16)
        x.mul_(_C1).bitwise_and_(_MASK32)
        x.bitwise_xor_(x >> 15)
        x.mul_(_C2).bitwise_and_(_MASK32)
        return x.bitwise_xor_(x >> 15)
    x = x ^ (x >> 16)
    x = (x * _C1) & _MASK32
    x = x ^ (x >> 15)
    x = (x * _C2) & _MASK32
    return x ^ (x >> 15)


def _chain(*values: int) -> int:
    """Hash a sequence of non-negative Python ints of any size into 32 bits."""
    h = 0x9E3779B9
    for value in values:
        if value < 0:
            raise ValueError(f"keys must be >= 0, got {value}")
        while True:  # fold ints wider than 32 bits, low word first
            h = mix32(h ^ (value & _MASK32))
            value >>= 32
            if value == 0:
                break
    return h


def sample_seed(seed: int, epoch: int, index: int, stream: int = 0) -> int:
    """One 32-bit seed for sample ``index`` in ``epoch``: seeds a per-sample generator where
    a pipeline must draw per sample (e.g. torchvision transforms on decoded files).

    Returns:
        An int in ``[0, 2**32)``, a pure function of the arguments.
    """
    return mix32(_chain(seed, epoch, stream) ^ (index & _MASK32))


class SampleKeys:
    """The random-number coordinates of one batch: ``seed``, ``epoch`` and each sample's index.

    Args:
        seed: The run's data seed (``>= 0``).
        epoch: Epoch of the batch (``>= 0``).
        indices: int64 ``(B,)`` index of each sample in its dataset file (not its position in
            the batch), on the device where the draws are wanted.

    Raises:
        ValueError: If ``seed`` or ``epoch`` is negative or ``indices`` is not 1-D.
        TypeError: If ``indices`` is not an integer tensor.
    """

    def __init__(self, seed: int, epoch: int, indices: Tensor) -> None:
        if seed < 0 or epoch < 0:
            raise ValueError(f"seed and epoch must be >= 0, got seed={seed}, epoch={epoch}")
        if not isinstance(indices, Tensor) or indices.is_floating_point() or indices.is_complex():
            got = indices.dtype if isinstance(indices, Tensor) else type(indices).__name__
            raise TypeError(f"indices must be an integer tensor, got {got}")
        if indices.dim() != 1:
            raise ValueError(f"indices must have shape (B,), got {tuple(indices.shape)}")
        self.seed = seed
        self.epoch = epoch
        self.indices = indices.long()
        self._hashes: Tensor | None = None

    def __len__(self) -> int:
        return self.indices.numel()

    @property
    def device(self) -> torch.device:
        """Where the draws are made."""
        return self.indices.device

    def _sample_hashes(self) -> Tensor:
        """Per-sample hashes of ``(seed, epoch, index)``, int64 ``(B,)`` (computed once)."""
        if self._hashes is None:
            # Mixed, so that no xor of two indices can line up with a xor of two draw hashes.
            base = _chain(self.seed, self.epoch)
            self._hashes = mix32((self.indices & _MASK32) ^ base)
        return self._hashes

    def bits(self, stream: int, *shape: int) -> Tensor:
        """32-bit hashes ``(B, *shape)`` of draw ``stream``, int64 in ``[0, 2**32)``.

        Entry ``[b, j...]`` is ``mix32(h(seed, epoch, indices[b]) ^ g(stream, j))`` where ``j``
        is the flat position in ``shape`` and ``h``, ``g`` are independent hash chains (``h``
        once per batch, ``g`` once per stream and size on the host, then cached on the device).
        """
        if stream < 0:
            raise ValueError(f"stream must be >= 0, got {stream}")
        count = 1
        for s in shape:
            count *= s
        terms = _stream_terms(stream, count, self.device)
        hashed = mix32(self._sample_hashes()[:, None] ^ terms[None, :])  # (B, count)
        return hashed.view(self.indices.numel(), *shape)

    def uniform(self, stream: int, *shape: int) -> Tensor:
        """Uniform float32 draws in ``[0, 1)``, shape ``(B, *shape)`` (24-bit resolution)."""
        return (self.bits(stream, *shape) >> 8).float().mul_(2.0**-24)

    def integers(self, stream: int, high: int, *shape: int) -> Tensor:
        """Integers uniform in ``[0, high)``, int64 ``(B, *shape)``.

        Raises:
            ValueError: If ``high`` is not in ``[1, 2**24]``.
        """
        if not 1 <= high <= 2**24:
            raise ValueError(f"high must be in [1, 2**24], got {high}")
        return (self.bits(stream, *shape) >> 8) * high >> 24


#: The per-draw hashes of ``(stream, j)``, cached per device: no host-to-device copy per batch.
_TERMS: dict[tuple[int, int, torch.device], Tensor] = {}


def _stream_terms(stream: int, count: int, device: torch.device) -> Tensor:
    """int64 ``(count,)`` hashes ``g(stream, j)`` on ``device`` (computed once, then cached)."""
    key = (stream, count, device)
    terms = _TERMS.get(key)
    if terms is None:
        values = [_chain(_STREAM_SALT, stream, j) for j in range(count)]
        terms = torch.tensor(values, dtype=torch.long).to(device)
        if len(_TERMS) < 4096:
            _TERMS[key] = terms
    return terms


def epoch_permutation(num: int, seed: int, epoch: int, stream: int = _ORDER_STREAM) -> Tensor:
    """The order of epoch ``epoch``: a permutation of ``range(num)``, a pure function of
    ``(num, seed, epoch, stream)`` (sorting 63-bit hashes of the positions, on the CPU).

    Returns:
        int64 ``(num,)``.
    """
    if num < 0:
        raise ValueError(f"num must be >= 0, got {num}")
    keys = SampleKeys(seed, epoch, torch.arange(num, dtype=torch.long))
    bits = keys.bits(stream, 2)  # (num, 2)
    order_keys = (bits[:, 0] << 31) | (bits[:, 1] >> 1)  # < 2**63, ties almost never
    return torch.sort(order_keys, stable=True).indices
