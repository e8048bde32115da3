"""Evaluate a trained run on its test split: `python scripts/evaluate.py run=<run dir>`.

Same as `mlpkit-evaluate run=<run dir>`; keys in configs/evaluate.yaml (mlpkit/evaluation.py does the work).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without install

from mlpkit.evaluation import evaluate_main  # noqa: E402

if __name__ == "__main__":
    evaluate_main()
