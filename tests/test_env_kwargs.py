"""--env-kwargs: one format (rl-zoo3's key:value) for every script, and an error that shows it."""

import subprocess
import sys

import pytest

from sb3_memory.envs.kwargs import env_kwarg_argument, parse_env_kwarg, parse_env_kwargs


def test_values_are_python_literals():
    assert parse_env_kwargs(["corridor_length:10", "rate:0.5", "name:'a:b'", "sizes:(1, 2)", "flag:True"]) == {
        "corridor_length": 10,
        "rate": 0.5,
        "name": "a:b",  # only the first colon splits
        "sizes": (1, 2),
        "flag": True,
    }
    assert parse_env_kwargs(None) == {}


@pytest.mark.parametrize(
    ("item", "match"),
    [
        ("corridor_length=5", r"not key:value .*\(not corridor_length=\.\.\.\)"),
        ("corridor_length", "not key:value"),
        (":5", "not key:value"),
        ("name:abc", "'abc' is not a Python literal"),
        ("n:3 +", "'3 \\+' is not a Python literal"),
    ],
)
def test_a_wrong_item_names_itself_and_the_format(item, match):
    with pytest.raises(ValueError, match=match):
        parse_env_kwarg(item)


@pytest.mark.parametrize("module", ["sb3_memory.viz", "sb3_memory.experiments.compare", "sb3_memory.experiments.recipe"])
def test_every_script_rejects_key_equals_value_in_one_line(module):
    args = ["--model", "m.zip", "--env", "x"] if module == "sb3_memory.viz" else []
    result = subprocess.run(
        [sys.executable, "-m", module, *args, "--env-kwargs", "corridor_length=5"], capture_output=True, text=True
    )
    assert result.returncode == 2  # argparse's usage error, before any work
    assert "argument --env-kwargs: env kwarg 'corridor_length=5' is not key:value" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_argparse_type_keeps_the_item_as_written():
    assert env_kwarg_argument("corridor_length:10") == "corridor_length:10"  # handed on to rl-zoo3 unchanged
