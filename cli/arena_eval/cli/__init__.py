"""The ``arena-eval`` command line. It parses arguments and hands off; no logic lives here."""
