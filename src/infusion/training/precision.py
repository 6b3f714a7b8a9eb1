"""Frozen weights in the weight dtype during a mixed-precision run, as diffusers' example scripts do.

diffusers' ``train_dreambooth_lora.py``, ``textual_inversion.py``, ``train_custom_diffusion.py`` cast the frozen
modules to ``weight_dtype`` (fp16/bf16) up front and keep only the trained tensors in fp32 (``cast_training_params``).
Without it autocast re-casts every frozen fp32 weight at every op and saves its low-precision copy for backward (on
CPU a bf16 step measured 11.8x the fp32 step's time and 3.7x its peak memory, benchmarks/results/peers_cpu.json,
"options"). On a CPU without bf16 instructions the step stays slow with the cast (the bf16 arithmetic itself is);
the copies saved for backward go.

``FrozenWeights`` records the base model's floating tensors before the method is built (so what the method adds,
its learned vectors, Deltas, LoRA factors and processors' buffers, is never touched), casts those still frozen once
the method is built, and puts the original fp32 tensors back, bit for bit, for exports and at the end of the run: a
pipeline passed in by the caller is left as it came.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

WEIGHT_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def weight_dtype(mixed_precision: str) -> torch.dtype | None:
    """The dtype frozen weights take under ``--mixed-precision`` (None for "no": everything stays fp32)."""
    return WEIGHT_DTYPES.get(mixed_precision)


def floating_tensors(modules: list[nn.Module]) -> list[torch.Tensor]:
    """Every floating parameter and buffer of ``modules``, each once (shared ones, tied embeddings included)."""
    seen, out = set(), []
    for m in modules:
        for t in [*m.parameters(), *m.buffers()]:
            if t.is_floating_point() and id(t) not in seen:
                seen.add(id(t))
                out.append(t)
    return out


def split_bf16(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 ``x`` -> (``x`` in bfloat16, the int16 rest of its bits): together the four bytes of ``x``, so that
    ``join_bf16`` gives ``x`` back bit for bit with no fp32 copy kept. With u = bits + 0x8000 (mod 2^32) the bfloat16
    is u's high half (round to nearest, ties away from zero: torch's ``.to(bfloat16)`` but for exact ties) and the
    rest u's low half."""
    u = (x.contiguous().view(torch.int32).to(torch.int64) + 0x8000) & 0xFFFFFFFF
    as_int16 = lambda v: ((v + 0x8000) & 0xFFFF) - 0x8000  # noqa: E731  (0..65535 -> int16's range)
    return as_int16(u >> 16).to(torch.int16).view(torch.bfloat16), as_int16(u & 0xFFFF).to(torch.int16)


def join_bf16(high: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:
    """Inverse of ``split_bf16``: the fp32 tensor, bit-equal to the one split."""
    u = ((high.view(torch.int16).to(torch.int64) & 0xFFFF) << 16) | (rest.to(torch.int64) & 0xFFFF)
    bits = (u - 0x8000) & 0xFFFFFFFF
    return (((bits + 0x80000000) & 0xFFFFFFFF) - 0x80000000).to(torch.int32).view(torch.float32)


class FrozenWeights:
    """The tensors of ``candidates`` that are frozen at ``cast()`` time, held in ``dtype`` while cast.

    A candidate that requires grad (DreamBooth's UNet, a fine-tuned text encoder) stays fp32: it is the optimizer's
    master weight. What ``restore`` puts back is each cast tensor's original, bit for bit: on an accelerator the
    original moves to the CPU (the device holds only the low-precision copy); on the CPU a bf16 cast keeps only the
    low 16 bits beside the bfloat16 weight (``split_bf16``: no more memory than the fp32 weights), an fp16 one the
    original.
    """

    def __init__(self, candidates: list[torch.Tensor], dtype: torch.dtype | None):
        self.candidates, self.dtype = candidates, dtype
        self._cast: list[tuple[torch.Tensor, object]] = []  # (tensor, what restores it)

    @property
    def cast_count(self) -> int:
        return len(self._cast)

    def cast(self) -> None:
        """Frozen fp32 candidates -> ``dtype`` (nothing when ``dtype`` is None or they are cast already)."""
        if self.dtype is None or self._cast:
            return
        for t in self.candidates:
            if t.requires_grad or t.dtype != torch.float32:
                continue
            data = t.data
            if data.device.type == "cpu" and self.dtype == torch.bfloat16:
                t.data, rest = split_bf16(data)
            else:
                rest = data if data.device.type == "cpu" else data.to("cpu")
                t.data = data.to(self.dtype)
            self._cast.append((t, rest))

    def restore(self) -> None:
        """Put every cast tensor's original back (bit-equal); idempotent."""
        for t, rest in self._cast:
            if rest.dtype == torch.int16:
                t.data = join_bf16(t.data, rest).view(t.shape)
            else:
                t.data = rest.to(t.device)
        self._cast = []

    @contextmanager
    def full_precision(self):
        """While active the cast tensors hold their originals (exports write fp32 base weights, as without
        mixed precision); cast again after."""
        was_cast = bool(self._cast)
        self.restore()
        try:
            yield
        finally:
            if was_cast:
                self.cast()
