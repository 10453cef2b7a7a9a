"""The ``sparo-clip`` command and the sub-commands that are not one package's own interface."""
