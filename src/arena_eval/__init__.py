"""arena-eval: an evaluation fabric for robot policies over Redis Streams.

The real code lives in the sub-packages (``broker``, ``sim_worker``,
``policy_worker``, ``cli``); this top-level package only namespaces them so
that nothing called ``broker`` or ``cli`` lands in site-packages.
"""

__version__ = "0.1.0"
