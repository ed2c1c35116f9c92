"""Callbacks for memory tasks: a difficulty curriculum driven by the training episodes' score, and a
wall-clock limit for comparisons at equal time."""

import time
from collections import deque
from typing import Any, Callable, ClassVar, Optional

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback

from sb3_memory.memory.checks import check_float, check_int


class LengthCurriculum(BaseCallback):
    """
    Raise a difficulty attribute of the training envs (``max_length`` of
    ``sb3_memory/BinaryCopy-v0``, say) one notch each time the recent training episodes score
    well enough, up to the value the envs were built with.

    Graves et al. trained the NTM on all lengths at once; with a reinforcement signal that says
    only how many bits were right, long sequences teach little until short ones are solved, so
    the curriculum starts short. The new value reaches each env through gymnasium's
    ``set_wrapper_attr`` (so through ``Monitor`` and other wrappers) and takes effect at the next
    episode. Evaluation envs are left alone: they measure the full difficulty throughout.
    Logged as ``curriculum/<attribute>``.

    In rl-zoo3 configs: ``callback: [{sb3_memory.common.callbacks.LengthCurriculum: {start: 2}}]``.

    :param attribute: the env attribute to raise (an integer)
    :param start: its value when training starts
    :param stop: the largest value; ``None``: the value the training envs had before training
    :param increment: how much each promotion adds
    :param threshold: the mean score over ``window`` episodes that earns a promotion
    :param metric: the ``info`` key of the score at an episode's end (``"bit_accuracy"``;
        ``"is_success"`` for tasks without a finer score)
    :param window: episodes (across all envs) the mean is taken over, counted afresh after a promotion
    :param verbose: 1: print each promotion
    """

    def __init__(
        self,
        attribute: str = "max_length",
        start: int = 2,
        stop: Optional[int] = None,
        increment: int = 1,
        threshold: float = 0.9,
        metric: str = "bit_accuracy",
        window: int = 200,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose)
        self.attribute = attribute
        self.start = check_int("start", start, 1)
        self.stop = None if stop is None else check_int("stop", stop, self.start, note="at least start")
        self.increment = check_int("increment", increment, 1)
        self.threshold = check_float("threshold", threshold)
        self.metric = metric
        self.window = check_int("window", window, 1)
        self.value = self.start
        self._scores: deque[float] = deque(maxlen=self.window)

    def _on_training_start(self) -> None:
        current = self.training_env.get_attr(self.attribute)
        if self.stop is None:
            self.stop = int(max(current))
        if self.stop < self.start:
            raise ValueError(
                f"LengthCurriculum: start={self.start} is above the envs' {self.attribute}={self.stop}; "
                f"give a smaller start or build the envs with {self.attribute} >= {self.start}"
            )
        if self.attribute.startswith("max_"):
            lower = "min_" + self.attribute[len("max_") :]
            floors = list(self.training_env.get_attr(lower)) if self.training_env.has_attr(lower) else []
            if floors and self.start < max(floors):
                raise ValueError(
                    f"LengthCurriculum: start={self.start} is below the envs' {lower}={max(floors)}; "
                    f"give start >= {max(floors)} or build the envs with a smaller {lower}"
                )
        # A resumed model keeps the curriculum's progress: the callback may be new, the envs too.
        self.value = int(min(max(self.value, self.start), self.stop))
        self._set(self.value)

    def _set(self, value: int) -> None:
        self.training_env.env_method("set_wrapper_attr", self.attribute, value)
        self.logger.record(f"curriculum/{self.attribute}", value)

    def _on_step(self) -> bool:
        infos: list[dict[str, Any]] = self.locals["infos"]
        for done, info in zip(self.locals["dones"], infos):
            if done and self.metric in info:
                self._scores.append(float(info[self.metric]))
        assert self.stop is not None
        if len(self._scores) == self.window and np.mean(self._scores) >= self.threshold and self.value < self.stop:
            self.value = min(self.value + self.increment, self.stop)
            self._set(self.value)
            self._scores.clear()
            if self.verbose:
                print(f"LengthCurriculum: {self.attribute} -> {self.value} at step {self.num_timesteps}")
        return True


class StopTrainingOnWallClock(BaseCallback):
    """
    Stop training once it has run for ``seconds`` (counted from the start of ``learn``,
    evaluations by other callbacks included), for comparisons at equal time: an agent twice as
    fast gets twice the steps. The steps reached are in ``num_timesteps``.

    ``clock="cpu"`` counts this process's CPU time instead of wall time. With one torch thread the
    two agree on an idle core; on a machine shared with other work, CPU time is what the run
    itself was given, so runs timed side by side stay comparable.

    In rl-zoo3 configs: ``callback: [{sb3_memory.common.callbacks.StopTrainingOnWallClock: {seconds: 600}}]``.

    :param seconds: the time allowed
    :param clock: ``"wall"`` (default) or ``"cpu"`` (this process's CPU time, all threads)
    :param verbose: 1: print when training is stopped
    """

    CLOCKS: ClassVar[dict[str, Callable[[], float]]] = {"wall": time.perf_counter, "cpu": time.process_time}

    def __init__(self, seconds: float, clock: str = "wall", verbose: int = 0) -> None:
        super().__init__(verbose)
        self.seconds = check_float("seconds", seconds, low=0.0)
        if clock not in self.CLOCKS:
            raise ValueError(f"clock must be one of {sorted(self.CLOCKS)}, got {clock!r}")
        self.clock = clock
        self._now = self.CLOCKS[clock]
        self._start = 0.0

    def _on_training_start(self) -> None:
        self._start = self._now()

    def _on_step(self) -> bool:
        if self._now() - self._start < self.seconds:
            return True
        if self.verbose:
            print(f"StopTrainingOnWallClock: {self.seconds:g} s of {self.clock} time reached at step {self.num_timesteps}")
        return False
