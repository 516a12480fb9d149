"""KL weight (beta) schedules.

- constant: beta_max from the first step (Su 2018 and the plain VAE).
- linear: 0 -> beta_max over ``warmup`` steps, then flat (Bowman et al. 2016).
- sigmoid: logistic ramp centred at warmup/2 (Sentence-VAE's "logistic").
- cyclical: the run is cut into ``cycles`` equal cycles; in each, beta ramps linearly
  from 0 to beta_max over the first ``ratio`` of the cycle, then stays at beta_max
  (Fu et al. 2019). Restarting from 0 lets the encoder re-learn to use z after the
  decoder has improved.
"""
import math
from dataclasses import dataclass

from .config import TrainConfig
from .errors import UserError

KINDS = ("constant", "linear", "sigmoid", "cyclical")


@dataclass
class KLSchedule:
    kind: str = "cyclical"
    beta_max: float = 1.0
    total_steps: int = 1     # length of the run (cyclical divides it into cycles)
    warmup: int = 1000       # linear / sigmoid: steps to reach beta_max
    cycles: int = 4          # cyclical: number of cycles
    ratio: float = 0.5       # cyclical: share of each cycle spent ramping

    def __post_init__(self):
        if self.kind not in KINDS:
            raise UserError(f"--kl-schedule must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.beta_max < 0 or self.total_steps < 1 or self.warmup < 1 or self.cycles < 1 \
                or not 0 < self.ratio <= 1:
            raise UserError("KL schedule needs beta-max >= 0, warmup >= 1, cycles >= 1 and "
                            "0 < ratio <= 1")

    def __call__(self, step):
        if self.kind == "constant":
            return self.beta_max
        if self.kind == "linear":
            return self.beta_max * min(1.0, step / self.warmup)
        if self.kind == "sigmoid":
            # 1/(1+exp(-k (step - warmup/2))) with k chosen so beta is ~0.0025 at step 0
            # and ~0.9975 at ``warmup``.
            k = 12.0 / self.warmup
            return self.beta_max / (1.0 + math.exp(-k * (step - self.warmup / 2)))
        period = self.total_steps / self.cycles
        tau = (step % period) / period if step < self.total_steps else 1.0
        return self.beta_max * min(1.0, tau / self.ratio)


def schedule_of(config):
    """The KL schedule of a saved run (config.json), as its trainer built it."""
    tc = TrainConfig(**config["train"])
    return kl_schedule(tc, tc.total_steps(tc.steps_per_epoch(
        config["data"]["counts"]["train"], config["model"]["max_len"])))


def kl_schedule(tc, total):
    """The KL weight's schedule of a run of ``total`` steps with settings ``tc``."""
    return KLSchedule(tc.kl_schedule, tc.beta_max, total, tc.kl_warmup, tc.kl_cycles,
                      tc.kl_ratio)
