"""User-facing errors: one line that says what is wrong and how to fix it."""


class UserError(Exception):
    """Bad input from the user (spec, plugin name, source, checkpoint...).

    The CLI prints ``error: <message>`` and exits with code 2, without a traceback.
    """

    exit_code = 2


class TrainingFailed(Exception):
    """Training itself failed (after the retries the spec allows): not a user error, exit code 1."""


class Diverged(TrainingFailed):
    """The loss kept diverging after the rollbacks the spec allows (``train.max_rollbacks``)."""
