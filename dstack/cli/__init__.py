"""The ``dstack`` command line."""
