"""Open-Sora 1.1's inference mask strategy: which reference latents go where.

A strategy is `;`-separated tuples `loop,ref_id,ref_start,target_start,length,edit_ratio`:
during generation loop `loop`, copy `length` latent frames of reference `ref_id`
starting at `ref_start` into the target at `target_start`, and let them be re-noised
for `edit_ratio` of the steps (0 = keep exactly). Missing trailing fields default to
`0,0,0,1,0` (ref 0, from its first frame, to the first target frame, one frame,
unedited); negative starts count from the end. One mechanism covers image-to-video
(`0`), extension (`0,0,-8,0,8`), connecting two clips (`0;0,1,0,-1,1`) and editing
(`0,0,0,0,16,0.4`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FIELDS = ("loop", "ref_id", "ref_start", "target_start", "length", "edit_ratio")
DEFAULTS = (0, 0, 0, 0, 1, 0.0)


# The conditioning tasks by name (the web app offers them; evaluation scores two), each a
# mask strategy: "image-to-video" starts the video with the reference's first frame,
# "extend" with its last `tail` frames, "connect" starts with reference 1 and ends with
# reference 2, "edit" re-noises every frame of the reference for 40% of the steps.
NAMED_MASK_STRATEGIES = {
    "image-to-video": "0",
    "extend": "0,0,-{tail},0,{tail}",
    "connect": "0;0,1,0,-1,1",
    "edit": "0,0,0,0,{num_frames},0.4",
}


def named_mask_strategy(name: str, num_frames: int, tail: int) -> str:
    """The mask strategy of a named conditioning task for a `num_frames` window."""
    if name not in NAMED_MASK_STRATEGIES:
        raise MaskStrategyError(f"mask strategy {name!r}: expected one of {', '.join(NAMED_MASK_STRATEGIES)}")
    return NAMED_MASK_STRATEGIES[name].format(num_frames=num_frames, tail=tail)


class MaskStrategyError(ValueError):
    """A malformed or impossible mask strategy."""


@dataclass(frozen=True)
class MaskOp:
    loop: int
    ref_id: int
    ref_start: int
    target_start: int
    length: int
    edit_ratio: float


def parse_mask_strategy(text: str | None) -> list[MaskOp]:
    """Parse `"0;0,1,0,-1,1"` into operations; empty or None means none."""
    if text is None or not text.strip():
        return []
    ops = []
    for index, item in enumerate(text.split(";")):
        parts = [p.strip() for p in item.split(",")]
        where = f"mask strategy {text!r}, tuple {index + 1} ({item.strip()!r})"
        if not item.strip() or any(p == "" for p in parts):
            raise MaskStrategyError(f"{where}: empty field")
        if len(parts) > len(FIELDS):
            raise MaskStrategyError(f"{where}: {len(parts)} fields, at most {len(FIELDS)} ({','.join(FIELDS)})")
        values: list[float | int] = list(DEFAULTS)
        for position, raw in enumerate(parts):
            try:
                values[position] = float(raw) if FIELDS[position] == "edit_ratio" else int(raw)
            except ValueError:
                kind = "a number" if FIELDS[position] == "edit_ratio" else "an integer"
                raise MaskStrategyError(f"{where}: {FIELDS[position]} must be {kind}, got {raw!r}") from None
        op = MaskOp(*values)  # type: ignore[arg-type]
        if op.loop < 0 or op.ref_id < 0:
            raise MaskStrategyError(f"{where}: loop and ref_id must be >= 0")
        if op.length < 1:
            raise MaskStrategyError(f"{where}: length must be >= 1, got {op.length}")
        if not 0.0 <= op.edit_ratio <= 1.0:
            raise MaskStrategyError(f"{where}: edit_ratio must be in [0, 1], got {op.edit_ratio}")
        ops.append(op)
    return ops


def _resolve(start: int, length: int, total: int, what: str, op: MaskOp) -> slice:
    begin = start + total if start < 0 else start
    if begin < 0 or begin + length > total:
        raise MaskStrategyError(
            f"{op}: {what} frames [{start}, {start}+{length}) do not fit in {total} latent frames"
        )
    return slice(begin, begin + length)


def apply_mask_strategy(
    ops: list[MaskOp], loop: int, references: list[torch.Tensor], num_frames: int, latent_shape: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """For one sample and one loop: (reference latents `[C, T, H, W]` placed at their
    target frames, frame mask `[T]` with 1 = generate and `edit_ratio` for placed
    frames), or None when no operation applies to this loop."""
    active = [op for op in ops if op.loop == loop]
    if not active:
        return None
    placed = torch.zeros(latent_shape)
    frame_mask = torch.ones(num_frames)
    for op in active:
        if op.ref_id >= len(references):
            raise MaskStrategyError(f"{op}: reference {op.ref_id} given, but only {len(references)} reference(s)")
        ref = references[op.ref_id]
        if ref.shape[0] != latent_shape[0] or ref.shape[2:] != tuple(latent_shape[2:]):
            raise MaskStrategyError(
                f"{op}: reference latents {tuple(ref.shape)} do not match the target {tuple(latent_shape)}"
            )
        source = _resolve(op.ref_start, op.length, ref.shape[1], "reference", op)
        target = _resolve(op.target_start, op.length, num_frames, "target", op)
        placed[:, target] = ref[:, source].to(placed.dtype)
        frame_mask[target] = op.edit_ratio
    return placed, frame_mask
