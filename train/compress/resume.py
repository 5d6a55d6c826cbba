"""Step-level resume of a distillation loop: every ``every`` steps the loop's whole state goes
to one file, so a run killed mid-way (as a working session's end kills it) continues from its
last saved step instead of losing hours of one core.

The file holds the student's weights, the optimiser's and the learning-rate schedule's state,
the step, the losses so far, every random state the loop may draw from (its own numpy
``Generator``, which fixes the data order, and torch's, numpy's and Python's global ones) and
``key``, the run's settings: a file written by a run with other settings is refused rather
than continued. It is written under a temporary name and renamed, so a kill while saving
leaves the previous one intact.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from train.export import save_atomic


class StoppedEarly(Exception):
    """Raised after the step ``StepCheckpoint.stop_after`` once its state is saved: a run
    killed there, for tests of resuming."""


@dataclass(frozen=True)
class StepCheckpoint:
    """Where and how often a loop saves its state; ``stop_after`` is a test hook."""

    path: Path
    every: int = 100
    key: dict = field(default_factory=dict)
    stop_after: int | None = None

    def restore(self, model: nn.Module, opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler,
                rng: np.random.Generator) -> tuple[int, list[float]]:
        """Load the saved state into the loop's objects; returns (steps done, their losses),
        (0, []) when there is no file."""
        if not self.path.exists():
            return 0, []
        state = torch.load(self.path, map_location="cpu", weights_only=False)  # our own file
        if state["key"] != self.key:
            raise ValueError(f"{self.path} was written by a run with other settings ({state['key']} != {self.key}); "
                             "delete it to start afresh")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        np.random.set_state(state["numpy_rng"])
        random.setstate(state["python_rng"])
        return state["step"], list(state["losses"])

    def after_step(self, step: int, losses: list[float], model: nn.Module, opt: torch.optim.Optimizer,
                   sched: torch.optim.lr_scheduler.LRScheduler, rng: np.random.Generator) -> None:
        """Save when ``step`` steps are done and due (every ``every``, or at ``stop_after``,
        then raise :class:`StoppedEarly`)."""
        stop = self.stop_after is not None and step >= self.stop_after
        if step % max(1, self.every) != 0 and not stop:
            return
        state = {"key": self.key, "step": step, "losses": list(losses), "model": model.state_dict(),
                 "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng": rng.bit_generator.state,
                 "torch_rng": torch.get_rng_state(), "numpy_rng": np.random.get_state(),
                 "python_rng": random.getstate()}
        save_atomic(state, self.path)
        if stop:
            raise StoppedEarly(f"stopped after step {step}; state in {self.path}")

    def remove(self) -> None:
        """Delete the file, once the run's final checkpoint is written."""
        self.path.unlink(missing_ok=True)
