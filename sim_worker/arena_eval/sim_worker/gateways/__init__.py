"""Gateways: serve clients that already speak a peer's protocol from an arena-eval pool.

Why: teams run evaluation loops against GR00T, IsaacLab-Arena or openpi policy
servers with those projects' own clients. A gateway speaks that protocol on
the outside and, on the inside, sends every request into a pool through a
``PolicyClient`` -- so those unmodified clients get cross-client batching,
replicas, reclaim and dead letters. A gateway is a sim-side process: no
torch, no model. ``core`` holds what every gateway shares (sessions, tokens,
fleet registration); ``zmq_gateway`` the ZeroMQ one; ``openpi_*`` the
websocket one.
"""
