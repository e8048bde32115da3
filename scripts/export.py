"""Export a trained run to run without mlpkit: `python scripts/export.py run=<run dir> format=onnx|torchscript`.

Keys in configs/export.yaml (mlpkit/export.py does the work).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without install

from mlpkit.export import export_main  # noqa: E402

if __name__ == "__main__":
    export_main()
