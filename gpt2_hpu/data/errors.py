"""The one exception type the prepare command turns into a one-line error."""


class PrepareError(Exception):
    """A user-facing problem: the message says what is wrong and what to do.

    ``exit_code`` is the process exit status: 1 for bad input, 2 for an output
    directory that holds something else (refused without ``--force``).
    """

    def __init__(self, message, exit_code=1):
        super().__init__(message)
        self.exit_code = exit_code
