"""What can stop a backtest, each with a message saying what to change::

BacktestError (an AutocanaryError: the CLI prints it and exits 1)
├── BacktestInputError   a bad window, release file or report file
├── OverrideError        a --set that does not parse, address a field, or validate
├── RetentionError       the window starts before Prometheus's retention horizon
├── UnknownVersionError  a version label matches no series (the versions present are listed)
├── NoDataError          a query returned nothing over the whole window (it is named)
└── PlotUnavailable      --plot without matplotlib (install the 'plot' extra)
"""

from __future__ import annotations

from autocanary.errors import AutocanaryError


class BacktestError(AutocanaryError):
    """Base of the errors a backtest raises on purpose."""


class BacktestInputError(BacktestError):
    """A window, a releases file or a saved report cannot be used as given."""


class OverrideError(BacktestError):
    """A ``--set PATH=VALUE`` is malformed, names no field, or makes the rollout invalid."""


class RetentionError(BacktestError):
    """Prometheus no longer keeps (all of) the window's samples."""


class UnknownVersionError(BacktestError):
    """A canary or stable version label matches no series in the window."""


class NoDataError(BacktestError):
    """The window holds no samples for a query the analysis needs."""


class PlotUnavailable(BacktestError):
    """matplotlib is not installed."""
