"""The one exception type users see for bad configuration or bad data."""


class ConfigError(ValueError):
    """Bad input (unknown name, impossible value, missing or corrupt data), raised before any long work."""
