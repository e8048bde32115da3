"""Predict new rows with a trained run: `python scripts/predict.py run=<run dir> input=new.csv output=pred.csv`.

Keys in configs/predict.yaml (mlpkit/prediction.py does the work).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without install

from mlpkit.prediction import predict_main  # noqa: E402

if __name__ == "__main__":
    predict_main()
