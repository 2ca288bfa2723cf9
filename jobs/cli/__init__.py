"""The ``mtlsprobe`` command line: the dispatcher, shared flags, one module per command."""
