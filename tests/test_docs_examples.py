"""
Every code example on the documentation site and in the README runs, and every command line shown parses.

Python examples are the ```python blocks of the markdown pages and the ``.. code-block:: python``
blocks of the reStructuredText pages. A page's blocks run in order in one namespace, in a temporary
folder, as a reader pasting them one after the other would. The fast tests lower the training budgets
with one documented substitution, :func:`reduced`: every ``total_timesteps=N`` becomes at most
``FAST_STEPS`` (the examples spell their budget that way so that this is the only change). The slow
tests run the examples as written and check the scores they claim.

Command lines are the ``bash`` blocks and the inline commands of the prose that start with
``.venv/bin/python`` or ``bash scripts/``: each program must exist, parse ``--help``, and list every
option the command gives it (shell scripts: ``bash -n``).
"""

import argparse
import re
import shlex
import subprocess
import sys
import textwrap
from functools import cache
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
# The pages people read; docs/results/* are generated tables without examples.
PAGES = sorted(
    [ROOT / "README.md", *DOCS.glob("*.rst"), *DOCS.glob("*.md"), *DOCS.glob("guide/*.rst"), *DOCS.glob("guide/*.md")]
)
FAST_STEPS = 512
# Pages whose examples take more than ~20 s even at FAST_STEPS: the ONNX export itself takes most of a
# minute on a 2-core machine (tests/test_export.py checks the export in the fast suite).
SLOW_PAGES = {"docs/guide/export.rst"}


def page_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


def code_blocks(path: Path, language: str) -> list[str]:
    """The code blocks of one language in a page, dedented, in page order."""
    text = path.read_text()
    if path.suffix == ".md":
        return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)
    blocks = []
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if line.strip() != f".. code-block:: {language}":
            continue
        directive_indent = len(line) - len(line.lstrip())
        body = []
        for following in lines[index + 1 :]:
            if following.strip() and len(following) - len(following.lstrip()) <= directive_indent:
                break
            body.append(following)
        # Drop the directive's options (":linenos:" and the like) and the blank line after them.
        source = textwrap.dedent("\n".join(body)).strip("\n")
        source = "\n".join(line for line in source.splitlines() if not re.match(r"^:\w[\w-]*:", line))
        blocks.append(source.strip("\n") + "\n")
    return blocks


def reduced(source: str, steps: int = FAST_STEPS) -> str:
    """The example with every ``total_timesteps=N`` lowered to at most ``steps``."""

    def lower(match: re.Match) -> str:
        return f"total_timesteps={min(int(match.group(1).replace('_', '')), steps)}"

    return re.sub(r"total_timesteps=([\d_]+)", lower, source)


def run_page(path: Path, capsys: Any, fast: bool, seed: int = 0) -> list[str]:
    """Run a page's Python blocks in one namespace (``seed=0`` replaced by ``seed``); return what each printed."""
    namespace: dict = {"__name__": "__docs_example__"}
    printed = []
    for source in code_blocks(path, "python"):
        source = reduced(source) if fast else source
        exec(compile(source.replace("seed=0,", f"seed={seed},"), page_id(path), "exec"), namespace)
        printed.append(capsys.readouterr().out)
    return printed


PAGES_WITH_EXAMPLES = [path for path in PAGES if code_blocks(path, "python")]


def test_pages_with_examples_are_found():
    """The extraction sees the examples of both markups (a broken pattern would silently test nothing)."""
    names = {page_id(path) for path in PAGES_WITH_EXAMPLES}
    assert {"README.md", "docs/quickstart.rst", "docs/guide/off_policy.rst", "docs/guide/export.rst"} <= names
    assert len(code_blocks(ROOT / "docs/quickstart.rst", "python")) == 3
    assert all("total_timesteps=" in block for block in code_blocks(ROOT / "README.md", "python"))


def test_reduced_lowers_only_the_budgets():
    source = "model.learn(total_timesteps=20_000)\nmodel.learn(total_timesteps=100)\nn_steps=2048\n"
    assert reduced(source) == "model.learn(total_timesteps=512)\nmodel.learn(total_timesteps=100)\nn_steps=2048\n"


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(path, id=page_id(path), marks=[pytest.mark.slow] if page_id(path) in SLOW_PAGES else [])
        for path in PAGES_WITH_EXAMPLES
    ],
)
def test_page_examples_run_and_print_what_they_achieved(path, capsys, tmp_path, monkeypatch):
    """Every example runs (budgets lowered) and prints what it did: no silent example."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    printed = run_page(path, capsys, fast=True)
    for index, output in enumerate(printed):
        assert output.strip(), f"{page_id(path)}: example {index + 1} printed nothing"


def printed_return(output: str) -> float:
    match = re.search(r"mean return (-?\d+\.\d+)", output)
    assert match, f"the example printed no score: {output!r}"
    return float(match.group(1))


@pytest.mark.slow
@pytest.mark.parametrize("page", ["README.md", "docs/quickstart.rst", "docs/guide/export.rst"])
def test_top_example_as_written_solves_the_maze(page, capsys, tmp_path, monkeypatch):
    """
    The T-maze example (README, quick start, and the model the ONNX page exports) as written scores
    1.00 on seed 0 on the machine the seed count was taken on; on another CPU, rounding can send seed 0
    elsewhere (the benchmarks page gives the count over 20 seeds), so seed 1 may stand in for it.
    """
    pytest.importorskip("onnxruntime")
    monkeypatch.chdir(tmp_path)
    # The maze's score is the first block's print, or the ONNX loop's (the export page's last block).
    score = printed_return(run_page(ROOT / page, capsys, fast=False)[-1 if "export" in page else 0])
    if score < 0.9:
        score = printed_return(run_page(ROOT / page, capsys, fast=False, seed=1)[-1 if "export" in page else 0])
    assert score >= 0.9


@pytest.mark.slow
def test_memory_dqn_example_as_written_solves_the_maze(capsys, tmp_path, monkeypatch):
    """The MemoryDQN example's settings solve the junction T-maze (measured 1.00 on seeds 0-2)."""
    monkeypatch.chdir(tmp_path)
    (block, _) = code_blocks(ROOT / "docs/guide/off_policy.rst", "python")
    exec(compile(block, "off_policy.rst", "exec"), {})
    assert printed_return(capsys.readouterr().out) >= 0.9


# --- command lines -------------------------------------------------------------------------------

ENV_ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=\S*$")


def shown_commands(path: Path) -> list[str]:
    """The command lines a page shows: bash blocks, and inline commands in the prose."""
    commands: list[str] = []
    for block in code_blocks(path, "bash"):
        for line in block.splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                commands.extend(part.strip() for part in line.split("&&"))
    inline = r"``([^`]+)``" if path.suffix == ".rst" else r"`([^`]+)`"
    for span in re.findall(inline, path.read_text()):
        span = " ".join(span.split())
        words = [word for word in span.split() if not ENV_ASSIGNMENT.match(word)]
        if len(words) > 1 and (words[0] == ".venv/bin/python" or (words[0] == "bash" and words[1].startswith("scripts/"))):
            commands.append(span)
    return commands


def program_of(command: str) -> tuple[tuple[str, ...], list[str]]:
    """``(program, arguments)``: the program is a script path or ``-m module [subcommand]``."""
    words = [word for word in shlex.split(command) if not ENV_ASSIGNMENT.match(word)]
    if words[0] == "bash":
        return ("bash", words[1]), words[2:]
    if words[0] == "pip":
        return ("pip",), words[1:]
    assert words[0] in (".venv/bin/python", "python"), f"unexpected program in {command!r}"
    if words[1] == "-m":
        module = words[2]
        if module == "sb3_memory.zoo":
            return ("-m", module, words[3]), words[4:]
        return ("-m", module), words[3:]
    return (words[1],), words[2:]


@cache
def help_text(program: tuple[str, ...]) -> str:
    if program[0] == "bash":
        script = ROOT / program[1]
        assert script.is_file(), f"{program[1]} does not exist"
        subprocess.run(["bash", "-n", str(script)], check=True)
        return script.read_text()
    if program[0] == "pip":
        return ""
    if program[0] != "-m":
        assert (ROOT / program[0]).is_file(), f"{program[0]} does not exist"
    result = subprocess.run(
        [sys.executable, *program, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, f"{' '.join(program)} --help failed:\n{result.stderr[-2000:]}"
    return result.stdout


ALL_COMMANDS = sorted({(page_id(path), command) for path in PAGES for command in shown_commands(path)})


def test_commands_are_found():
    commands = {command for _, command in ALL_COMMANDS}
    assert "bash scripts/setup.sh" in commands and ".venv/bin/python scripts/demo.py" in commands
    assert any("sb3_memory.zoo train" in command and "-params" in command for command in commands)


@pytest.mark.parametrize("page, command", ALL_COMMANDS, ids=[f"{page}: {command[:60]}" for page, command in ALL_COMMANDS])
def test_command_parses(page, command):
    """The program exists and parses --help (shell scripts: bash -n), and knows every option given."""
    program, arguments = program_of(command)
    text = help_text(program)
    if program[0] in ("bash", "pip"):
        return
    for argument in arguments:
        option = argument.split("=")[0]
        if option.startswith("-") and not re.match(r"^-\d", option):
            assert re.search(rf"(^|[\s,\[]){re.escape(option)}\b", text), f"{' '.join(program)} has no option {option}"


def test_zoo_params_need_a_quoted_string():
    """rl-zoo3 reads -params "policy:'NTMPolicy'" (the form the docs show) as the name; the bare form fails."""
    pytest.importorskip("rl_zoo3")
    from rl_zoo3.utils import StoreDict

    parser = argparse.ArgumentParser()
    parser.add_argument("-params", nargs="+", action=StoreDict)
    assert parser.parse_args(["-params", "policy:'NTMPolicy'"]).params == {"policy": "NTMPolicy"}
    with pytest.raises(NameError):
        parser.parse_args(["-params", "policy:NTMPolicy"])
