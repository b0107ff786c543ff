"""User-facing errors: raised for bad input, printed as one `error:` line by the scripts (exit code 2)."""


class UserError(Exception):
    """A problem with the user's config, data, checkpoint or submission; the message names the culprit."""
