"""Helpers shared by the model families."""


def scale_channels(channels: int, width: float, divisor: int = 1) -> int:
    """`channels * width` rounded half-up to a multiple of `divisor` (at least `divisor`)."""
    return max(divisor, int(channels * width / divisor + 0.5) * divisor)
