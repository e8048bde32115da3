"""The remedy loop in one command: `python scripts/diagnose.py <the overrides you would give train.py>`.

Trains the config over diagnose.seeds seeds and, when its gradients are not healthy, the remedies its
verdict names; prints one table and the override line to copy (mlpkit/diagnosis.py does the work).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without install

from mlpkit.diagnosis import diagnose_command  # noqa: E402

if __name__ == "__main__":
    diagnose_command()
