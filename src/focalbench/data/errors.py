"""The one exception type for bad data."""


class DataError(ValueError):
    """Bad or missing data, reported in one line naming the file, the value and what is allowed."""
