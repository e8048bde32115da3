"""Train an MLP: `python train.py activation=tanh` (see README.md)."""
from mlpkit.cli import main

if __name__ == "__main__":
    main()
