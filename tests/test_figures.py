"""The README's "Figures" section quotes the live benchmarks as `make bench` last wrote them."""

from pathlib import Path

from bench.figures import figures


def test_readme_figures_match_bench_results():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    assert figures() in readme
