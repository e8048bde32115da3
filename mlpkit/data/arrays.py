"""``data=arrays``: the rows an estimator's ``fit(X, y)`` holds in memory (mlpkit.sklearn builds
them into a run's data itself). The command line has no rows to give, so loading it by name is
refused in one line."""
from __future__ import annotations

from mlpkit.data.raw import RawData
from mlpkit.errors import ConfigError


def arrays() -> RawData:
    raise ConfigError("data", "arrays", "a data set the command line can load, e.g. data=digits or data=csv "
                      "data.path=my.csv", "data=arrays is the X and y given to mlpkit.sklearn's fit(X, y)")
