"""Errors a user can cause.

Each carries one sentence that says what is wrong and how to fix it; the CLI
prints it without a traceback and exits with ``exit_code``. Anything else that
escapes is our bug and keeps its traceback.
"""


class PipelineError(Exception):
    """A problem the user can fix (config, data, weights, budgets)."""

    exit_code = 2


class ConfigError(PipelineError):
    """The config file or a --set override is invalid."""


class DataError(PipelineError):
    """The dataset cannot be used as given."""


class WeightsError(PipelineError):
    """Backbone weights cannot be loaded."""


class BudgetError(PipelineError):
    """An exported file failed its validation budget; it was not published."""

    exit_code = 1
