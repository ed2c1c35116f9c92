"""Memory task suite: gymnasium environments that only an agent with memory can solve.

Importing this module registers the tasks with gymnasium (idempotently)::

    import gymnasium as gym
    import sb3_memory.envs  # noqa: F401

    env = gym.make("sb3_memory/Copy-v0", length=5)

or, without the import, ``gym.make("sb3_memory.envs:sb3_memory/Copy-v0")``.

* ``sb3_memory/Copy-v0`` (:class:`CopyEnv`): knob ``length`` (default 10);
  optimal return ``length``, chance ``length / num_symbols``.
* ``sb3_memory/RepeatAfterDelay-v0`` (:class:`RepeatAfterDelayEnv`): knob ``delay`` (default 5);
  optimal return ``episode_length - delay`` (20 by default), chance that over ``num_symbols``.
* ``sb3_memory/AssociativeRecall-v0`` (:class:`AssociativeRecallEnv`): knob ``num_pairs``
  (default 8); optimal return 1, chance ``1 / num_values``.
* ``sb3_memory/PassiveTMaze-v0`` (:class:`PassiveTMazeEnv`): knob ``corridor_length``
  (default 100); optimal return 1, chance 0.5.
* ``sb3_memory/PassiveTMazeJunction-v0``: the same with ``auto_walk=True`` (the corridor walks
  itself, only the turn at the junction is the agent's) and ``corridor_length=50``.
* ``sb3_memory/BinaryCopy-v0`` (:class:`BinaryCopyEnv`): Graves' copy of random bit vectors,
  ``MultiBinary`` actions; knobs ``min_length``/``max_length`` (default 1-20) and ``bits`` (8);
  score ``info["bit_accuracy"]``, chance 0.5 per bit.
* ``sb3_memory/BinaryAssociativeRecall-v0`` (:class:`BinaryAssociativeRecallEnv`): Graves'
  associative recall of bit-vector items; knobs ``min_items``/``max_items`` (default 2-6),
  ``item_size`` (3) and ``bits`` (8).

Every environment ends its episodes by itself (``terminated=True``), so none is registered
with ``max_episode_steps``. "Chance return" is the expected return of the best memoryless
policy (current observation -> action).
"""

import gymnasium

from sb3_memory.envs.associative_recall import AssociativeRecallEnv
from sb3_memory.envs.base import MemoryTaskEnv
from sb3_memory.envs.binary import BinaryAssociativeRecallEnv, BinaryCopyEnv, BinaryTaskEnv
from sb3_memory.envs.copy_task import CopyEnv
from sb3_memory.envs.repeat_after_delay import RepeatAfterDelayEnv
from sb3_memory.envs.tmaze import PassiveTMazeEnv

__all__ = [
    "ENV_IDS",
    "AssociativeRecallEnv",
    "BinaryAssociativeRecallEnv",
    "BinaryCopyEnv",
    "BinaryTaskEnv",
    "CopyEnv",
    "MemoryTaskEnv",
    "PassiveTMazeEnv",
    "RepeatAfterDelayEnv",
    "register_envs",
]

_ENTRY_POINTS = {
    "sb3_memory/Copy-v0": "sb3_memory.envs.copy_task:CopyEnv",
    "sb3_memory/RepeatAfterDelay-v0": "sb3_memory.envs.repeat_after_delay:RepeatAfterDelayEnv",
    "sb3_memory/AssociativeRecall-v0": "sb3_memory.envs.associative_recall:AssociativeRecallEnv",
    "sb3_memory/PassiveTMaze-v0": "sb3_memory.envs.tmaze:PassiveTMazeEnv",
    "sb3_memory/PassiveTMazeJunction-v0": "sb3_memory.envs.tmaze:PassiveTMazeEnv",
    "sb3_memory/BinaryCopy-v0": "sb3_memory.envs.binary:BinaryCopyEnv",
    "sb3_memory/BinaryAssociativeRecall-v0": "sb3_memory.envs.binary:BinaryAssociativeRecallEnv",
}
# Registered defaults of ids that share a class with another id.
_KWARGS: dict[str, dict[str, object]] = {
    "sb3_memory/PassiveTMazeJunction-v0": {"auto_walk": True, "corridor_length": 50},
}

#: Registered environment ids.
ENV_IDS: tuple[str, ...] = tuple(_ENTRY_POINTS)


def register_envs() -> None:
    """Register the memory tasks with gymnasium; ids already registered are left alone."""
    for env_id, entry_point in _ENTRY_POINTS.items():
        if env_id not in gymnasium.registry:
            gymnasium.register(id=env_id, entry_point=entry_point, kwargs=_KWARGS.get(env_id, {}))


register_envs()
