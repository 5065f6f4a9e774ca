"""Policy workers: the Policy interface, its registry, built-in policies and the serve loop."""
