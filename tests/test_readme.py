"""The README quotes the benchmark figures as `make bench` last wrote them."""

from pathlib import Path

from bench.readme_table import table


def test_readme_gas_table_matches_bench_results():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert table() in readme
