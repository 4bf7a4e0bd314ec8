"""Units rnnfarm reports in: losses in nats per character (bits per character shown beside them), and
times as UTC in ISO 8601."""

import math
import time

LN2 = math.log(2)


def bits(nats: float) -> float:
    """Bits per character of a loss in nats per character."""
    return nats / LN2


def now() -> str:
    """This moment as UTC, to the second (``2026-12-01T22:00:00Z``): run records and checkpoints use it."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
