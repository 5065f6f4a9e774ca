"""Behaviour cloning from recorded episodes (``arena-eval train bc``).

Why it is here: no peer ships weights this fabric can load, so a learned
policy has to be made here, from episodes the fabric itself recorded, and then
served by the unchanged ``torch`` built-in. It lives in ``policy_worker``
(never ``sim_worker``: the workers do not import each other) and needs torch,
so only the ``[policy]`` extra pulls it in; nothing imports it at start-up.

Modules: ``data`` (episodes in memory, chunked samples, the LeRobot-layout
reader), ``models`` (the MLP and CNN with their normalisation inside),
``trainer`` (the loop, loss curve) and ``export`` (the ``.pt2`` checkpoint
with its spec embedded).
"""
