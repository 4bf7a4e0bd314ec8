"""Weight averaging: an averaged copy of the parameters, updated after each optimizer step.

Evaluation, the best checkpoint and sampling use the averaged weights (``applied`` swaps them into the model
for a while); training goes on from the raw ones. Both are saved, so a resume continues bitwise.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from ..spec import AverageSpec


class Average:
    """An exponential moving average (``ema``) or a running mean from ``start`` on (``swa``) of the parameters.

    The EMA's decay warms up as ``min(decay, (1 + n) / (10 + n))`` after n updates, so that early evaluations
    are not dominated by the initial weights.
    """

    def __init__(self, model: torch.nn.Module, spec: AverageSpec) -> None:
        self.spec, self.steps = spec, 0  # optimizer steps seen
        self.params = {name: p.detach().clone() for name, p in model.named_parameters()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Average in the parameters after an optimizer step."""
        s = self.spec
        self.steps += 1
        averaged, params = list(self.params.values()), [p.detach() for p in model.parameters()]
        if s.kind == "swa" and self.steps <= s.start:  # before the mean starts, it follows the weights
            torch._foreach_copy_(averaged, params)
            return
        n = self.steps - s.start if s.kind == "swa" else self.steps  # updates averaged in, this one included
        weight = 1 / n if s.kind == "swa" else 1 - min(s.decay, n / (9 + n))
        torch._foreach_lerp_(averaged, params, weight)  # one kernel launch for every tensor on a GPU

    @contextlib.contextmanager
    def applied(self, model: torch.nn.Module) -> Iterator[None]:
        """The model with the averaged weights in place of its own (the same tensors, so the optimizer's hold)."""
        params = dict(model.named_parameters())
        raw = {name: p.detach().clone() for name, p in params.items()}
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(self.params[name])
        try:
            yield
        finally:
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(raw[name])

    def state_dict(self) -> dict[str, object]:
        return {"steps": self.steps, "params": {k: v.clone() for k, v in self.params.items()}}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.steps = int(state["steps"])
        for name, value in state["params"].items():
            self.params[name].copy_(value)


def make_average(model: torch.nn.Module, spec: AverageSpec) -> Average | None:
    return None if spec.kind == "none" else Average(model, spec)


def applied(average: Average | None, model: torch.nn.Module) -> contextlib.AbstractContextManager:
    """The averaged weights in the model while the block runs; the model as it is without averaging."""
    return average.applied(model) if average is not None else contextlib.nullcontext()
