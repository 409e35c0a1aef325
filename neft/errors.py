"""What a user can get wrong, as opposed to a bug: stages print these as one line and exit 2."""


class UserError(ValueError):
    """Base of every error that a change of configuration, data or artifacts fixes."""


class ConfigError(UserError):
    """The configuration asks for something that does not exist or cannot work."""
