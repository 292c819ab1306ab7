"""A module whose import fails (the module server must exit with this error)."""

raise ImportError("boom-xyz: this module cannot be imported")
