"""The exceptions a user can act on, each said in one line by `hfstack <command>` (hfstack/cli.py): a config
or input problem names the file or field and what was expected (exit 2); a stage's work that failed says
where it logged why (exit 1)."""


class ConfigError(ValueError):
    """A config problem the user can fix: the message names the file/field and what was expected."""


class StageFailed(RuntimeError):
    """Work a stage ran failed and was logged where the message says (a data task on a cluster)."""
