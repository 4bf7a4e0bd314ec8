"""The parts of bench/quality.py: launching ``rnnfarm run`` and reading what it left (launch), the figures
measured from those runs (figures), and the results file with the Markdown section it renders (markdown)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
DEPLOY = ROOT / "deploy"
RESULTS = ROOT / "bench" / "results" / "quality.json"
BENCHMARKS = ROOT / "BENCHMARKS.md"
