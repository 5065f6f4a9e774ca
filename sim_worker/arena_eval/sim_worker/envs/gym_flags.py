"""The info keys under which :class:`~.gym_episode.EpisodeGuard` reports real episode flags.

Why a module of its own: the guard (which needs gymnasium at import) writes them and the
vector adapter (:mod:`.gym_env`, which imports gymnasium lazily) reads them, so neither can
import the other at module level; both import these names from here instead.
"""

from __future__ import annotations

TERMINATED = "arena.terminated"
TRUNCATED = "arena.truncated"
SUCCESS = "arena.success"
