"""mlpkit's Optuna sweeper where Hydra looks for plugins: Hydra builds a sweeper only from a class of the
hydra_plugins package. The code is mlpkit.pruning's; configs/hparams_search/optuna.yaml names this class."""
from mlpkit import pruning


class OptunaPruningSweeper(pruning.OptunaPruningSweeper):
    """hydra-optuna-sweeper's study loop with Optuna and verdict pruning (mlpkit.pruning)."""
