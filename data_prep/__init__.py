"""Dataset preparation CLIs: ``python -m data_prep.<name> --<flag>=<value>``."""
