"""
The README is a short front door whose example is the demo's, and whose links lead somewhere.

The examples themselves run in tests/test_docs_examples.py (with every page of the site).
"""

import ast
import re
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), flags=re.DOTALL | re.MULTILINE)


def memory_ppo_keywords(source: str) -> dict[Optional[str], object]:
    """The literal keyword arguments of the first ``MemoryPPO(...)`` call in ``source``."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "MemoryPPO":
            keywords: dict[Optional[str], object] = {}
            for keyword in node.keywords:
                try:
                    keywords[keyword.arg] = ast.literal_eval(keyword.value)
                except ValueError:
                    keywords[keyword.arg] = ast.unparse(keyword.value)
            return keywords
    raise AssertionError("no MemoryPPO(...) call")


def test_readme_is_short():
    assert len(README.read_text().splitlines()) <= 200


def test_relative_links_exist():
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README.read_text())
    relative = [link for link in links if not re.match(r"^[a-z]+://", link)]
    assert relative, "the README links into the site"
    missing = [link for link in relative if not (ROOT / link).exists()]
    assert not missing, f"README links to missing files: {missing}"


def test_top_example_is_the_quick_start_and_the_demo():
    """
    The seed count of scripts/demo_seeds.sh is the README example's only if they train the same
    agent: the README's block is the quick start's first block, and the demo builds MemoryPPO with the
    same settings (its seed and policy come from its arguments, with the example's values as defaults).
    """
    (top,) = python_blocks(README)
    quickstart = (ROOT / "docs" / "quickstart.rst").read_text()
    indented = "\n".join("   " + line if line else "" for line in top.rstrip("\n").splitlines())
    assert indented in quickstart
    demo = (ROOT / "scripts" / "demo.py").read_text()
    readme_keywords = memory_ppo_keywords(top)
    demo_keywords = memory_ppo_keywords(demo)
    assert readme_keywords.pop("seed") == 0 and demo_keywords.pop("seed") == "args.seed"
    assert readme_keywords == demo_keywords
    assert re.search(r'default="DNCPolicy"', demo) and '"DNCPolicy"' in top
    for setting in ('"sb3_memory/PassiveTMazeJunction-v0"', "n_envs=16", "default=20_000", "n_eval_episodes=100"):
        assert setting in demo
    for setting in ('"sb3_memory/PassiveTMazeJunction-v0"', "n_envs=16", "total_timesteps=20_000", "n_eval_episodes=100"):
        assert setting in top


def test_seed_count_is_the_measured_one():
    """A seed count in the README is the one on the benchmarks page, over at least 20 seeds."""
    claims = re.findall(r"(\d+) of (\d+) seeds", README.read_text())
    benchmarks = (ROOT / "docs" / "benchmarks.md").read_text()
    for solved, seeds in claims:
        if int(seeds) >= 20:
            assert f"{solved} of {seeds} seeds" in benchmarks
    assert all(int(seeds) >= 20 or int(seeds) == 5 for _, seeds in claims), claims
