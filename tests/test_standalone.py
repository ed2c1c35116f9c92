"""The memory cores are pure PyTorch: importing them loads neither SB3, sb3-contrib nor gymnasium."""

import subprocess
import sys

import pytest

FRAMEWORKS = ("stable_baselines3", "sb3_contrib", "gymnasium", "rl_zoo3")


def _loaded_after(statement: str) -> set[str]:
    probe = f"import sys\n{statement}\nprint(' '.join(sorted(m for m in {FRAMEWORKS!r} if m in sys.modules)))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(result.stdout.split())


@pytest.mark.parametrize(
    "statement",
    [
        "import sb3_memory.memory",
        "from sb3_memory.memory import DNCCell, NTMCell, addressing",
        "import sb3_memory; import sb3_memory.memory.checks",
    ],
)
def test_memory_package_imports_without_the_rl_frameworks(statement):
    assert _loaded_after(statement) == set()


def test_a_dnc_cell_steps_without_the_rl_frameworks():
    statement = (
        "import torch\n"
        "from sb3_memory.memory import DNCCell\n"
        "cell = DNCCell(3, memory_units=8, memory_unit_size=4, num_read_heads=2, controller_dim=16)\n"
        "state = cell.initial_state(2)\n"
        "out, state = cell(torch.ones(2, 3), state)\n"
        "assert torch.isfinite(out).all() and out.shape[0] == 2"
    )
    assert _loaded_after(statement) == set()


def test_the_package_root_still_registers_the_envs_and_loads_the_algorithms_on_use():
    statement = (
        "import gymnasium\n"
        "import sb3_memory\n"
        "gymnasium.make('sb3_memory/Copy-v0')\n"
        "from sb3_memory.ppo import MemoryPPO\n"
        "assert sb3_memory.MemoryPPO is MemoryPPO and 'MemoryPPO' in dir(sb3_memory)"
    )
    assert "stable_baselines3" in _loaded_after(statement)


def test_an_unknown_name_of_the_package_root_raises_attribute_error():
    import sb3_memory

    with pytest.raises(AttributeError, match="no attribute 'MemoryTD3'"):
        _ = sb3_memory.MemoryTD3
