"""
Errors for a wrong policy name or action space that say which name or algorithm fits, raised
before SB3's own (``Policy MlpPolicy unknown``, an ``AssertionError`` on the action space).
"""

from collections.abc import Iterable

from gymnasium import spaces

#: sb3-contrib's RecurrentPPO policy names and their match here (an LSTM core, no external memory).
CONTRIB_LSTM_POLICIES = {
    "MlpLstmPolicy": "LSTMPolicy",
    "CnnLstmPolicy": "CnnLSTMPolicy",
    "MultiInputLstmPolicy": "MultiInputLSTMPolicy",
}
#: SB3's memoryless policy names, and the memory policy of the same input kind.
SB3_PLAIN_POLICIES = {"MlpPolicy": "NTMPolicy", "CnnPolicy": "CnnNTMPolicy", "MultiInputPolicy": "MultiInputNTMPolicy"}

#: The action spaces each memory algorithm takes (the on-policy ones take all of SB3's).
ACTION_SPACES: dict[str, tuple[type[spaces.Space], ...]] = {
    "MemoryDQN": (spaces.Discrete,),
    "MemorySAC": (spaces.Box,),
    "MemoryPPO": (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary),
    "MemoryA2C": (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary),
}


def unknown_policy_error(algorithm: str, policy_name: str, aliases: Iterable[str], sb3_algorithm: str) -> ValueError:
    """
    The error for a policy name that ``algorithm`` does not know: the names it does know, and the
    likely meaning of a name from SB3 or sb3-contrib.

    :param algorithm: the algorithm's class name, e.g. ``"MemoryDQN"``
    :param policy_name: the name given
    :param aliases: the algorithm's ``policy_aliases``
    :param sb3_algorithm: SB3's algorithm without memory, e.g. ``"DQN"`` (named for SB3's ``MlpPolicy``)
    """
    names = ", ".join(repr(name) for name in aliases)
    hint = ""
    if policy_name in CONTRIB_LSTM_POLICIES:
        hint = f"; sb3-contrib's {policy_name} is {CONTRIB_LSTM_POLICIES[policy_name]!r} here (an LSTM, no external memory)"
    elif policy_name in SB3_PLAIN_POLICIES:
        hint = (
            f"; for a memory use {SB3_PLAIN_POLICIES[policy_name]!r} (or its DNC/LSTM forms), for SB3's memoryless "
            f"{policy_name} use stable_baselines3.{sb3_algorithm}"
        )
    return ValueError(f"Policy {policy_name!r} unknown to {algorithm}: choose one of {names}{hint}")


def check_action_space(algorithm: str, action_space: spaces.Space) -> None:
    """
    Raise a ValueError naming the algorithms that take ``action_space`` when ``algorithm`` does not.

    :param algorithm: a key of :data:`ACTION_SPACES`
    :param action_space: the environment's action space
    """
    supported = ACTION_SPACES[algorithm]
    if isinstance(action_space, supported):
        return
    on_policy = ("MemoryPPO", "MemoryA2C")
    fitting = [
        name
        for name, kinds in ACTION_SPACES.items()
        if name not in (algorithm, *on_policy) and isinstance(action_space, kinds)
    ]
    suggestion = f"{' or '.join(fitting)} for {type(action_space).__name__} actions, or " if fitting else ""
    kinds = " and ".join(kind.__name__ for kind in supported)
    raise ValueError(
        f"{algorithm} takes {kinds} actions only, got {action_space}: use {suggestion}MemoryPPO / MemoryA2C (any action space)"
    )
