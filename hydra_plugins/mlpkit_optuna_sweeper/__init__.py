"""mlpkit's Optuna sweeper where Hydra looks for plugins: Hydra builds a sweeper only from a class of the
hydra_plugins package. The code is mlpkit.optuna_sweeper's; configs/hparams_search/optuna.yaml names this class."""
from mlpkit import optuna_sweeper


class OptunaPruningSweeper(optuna_sweeper.OptunaPruningSweeper):
    """hydra-optuna-sweeper's settings, with mlpkit.optuna_sweeper's study loop: shared studies, Optuna and verdict pruning."""
