"""Cost of a trained transition: MemoryDQN's sequence replay against a MemoryPPO update, same core.

Both algorithms get the same policy core on the same task (the T-maze of ``memory_dqn.yml``). The
buffers are filled once, then ``train()`` alone is timed, alternating between the algorithms round
by round in one process with one torch thread:

* MemoryDQN: ``gradient_steps`` updates of ``batch_size`` sequences; each trains ``train_length``
  transitions, and also replays ``burn_in`` steps (online and target network) and ``n_steps``
  lookahead steps, which are part of its cost;
* MemoryPPO: one ``train()`` (``n_epochs`` passes over ``n_steps * n_envs`` transitions).

Reported: microseconds per trained transition, median over rounds, and the ratio (the off-policy
issue's target: replay costs no more than 2x a MemoryPPO update per transition trained).

Usage: python scripts/bench_replay.py [--policy NTMPolicy] [--rounds 5] [--batch-size 32] [--train-length 8]
"""

import argparse
import statistics
import time
from typing import Any, Callable

import torch
from stable_baselines3.common.env_util import make_vec_env

from sb3_memory import MemoryDQN, MemoryPPO

ENV = "sb3_memory/PassiveTMaze-v0"
ENV_KWARGS = dict(corridor_length=5)
CORE = dict(memory_units=16, memory_unit_size=8, controller_dim=32)


def per_transition(train: Callable[[], Any], transitions: int) -> float:
    start = time.perf_counter()
    train()
    return (time.perf_counter() - start) / transitions * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", default="NTMPolicy", choices=["NTMPolicy", "DNCPolicy", "LSTMPolicy"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32, help="MemoryDQN: sequences per update")
    parser.add_argument("--burn-in", type=int, default=4)
    parser.add_argument("--train-length", type=int, default=8)
    parser.add_argument("--n-steps", type=int, default=3, help="MemoryDQN's n-step return")
    parser.add_argument("--gradient-steps", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    core = CORE if args.policy != "LSTMPolicy" else dict(controller_dim=32)
    env = make_vec_env(ENV, n_envs=8, seed=0, env_kwargs=ENV_KWARGS)
    dqn = MemoryDQN(
        args.policy, env, learning_starts=0, buffer_size=16_384, batch_size=args.batch_size, burn_in=args.burn_in,
        train_length=args.train_length, n_steps=args.n_steps, drift_interval=0, seed=0, policy_kwargs=core,
    )  # fmt: skip
    dqn.learn(4_096)  # fills the buffer (and trains a little)
    ppo = MemoryPPO(
        args.policy, env, n_steps=32, batch_size=256, n_epochs=4, sequence_length=32, seed=0,
        policy_kwargs={**core, "critic_memory": "detached"},
    )  # fmt: skip
    ppo.learn(ppo.n_steps * ppo.n_envs)  # one rollout in the buffer
    dqn_transitions = args.gradient_steps * args.batch_size * args.train_length
    ppo_transitions = ppo.n_epochs * ppo.n_steps * ppo.n_envs
    times: dict[str, list[float]] = {"MemoryDQN": [], "MemoryPPO": []}
    for _ in range(args.rounds):
        times["MemoryDQN"].append(per_transition(lambda: dqn.train(args.gradient_steps, args.batch_size), dqn_transitions))
        times["MemoryPPO"].append(per_transition(ppo.train, ppo_transitions))
    dqn_us, ppo_us = statistics.median(times["MemoryDQN"]), statistics.median(times["MemoryPPO"])
    sequence = args.burn_in + args.train_length + args.n_steps
    print(f"{args.policy}, one thread, median of {args.rounds} rounds, microseconds per trained transition:")
    print(f"  MemoryDQN {dqn_us:8.1f}  ({args.batch_size} sequences of {sequence} steps, {args.train_length} trained)")
    print(f"  MemoryPPO {ppo_us:8.1f}  ({ppo.n_epochs} epochs of {ppo.n_steps * ppo.n_envs} transitions)")
    print(f"  ratio     {dqn_us / ppo_us:8.2f}")


if __name__ == "__main__":
    main()
