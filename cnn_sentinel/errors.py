"""The one error type of bad user input, and the exit status it ends a script with."""

EXIT_INPUT_ERROR = 2


class InputError(Exception):
    """Bad input from the user: the message is one sentence naming the culprit."""
