"""Units of a loss: rnnfarm computes nats per character; bits per character are shown beside them."""

import math

LN2 = math.log(2)


def bits(nats: float) -> float:
    """Bits per character of a loss in nats per character."""
    return nats / LN2
