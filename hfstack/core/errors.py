"""The one exception a user can act on: a config or input problem, said in one line that names the
file or field and what was expected. `hfstack <command>` prints it and exits 2 (hfstack/cli.py)."""


class ConfigError(ValueError):
    """A config problem the user can fix: the message names the file/field and what was expected."""
