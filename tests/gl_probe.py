"""Whether a camera can render on this machine: CI installs libosmesa6, a bare machine may not."""

from __future__ import annotations

import os


def gl_problem() -> str | None:
    """Why no camera can render here (no loadable GL library), or None.

    Asks the product's own check (``sim_worker/envs/gl.py``) and leaves ``MUJOCO_GL``
    as it was, so the probe changes nothing for the tests that run after it.
    """
    from arena_eval.sim_worker.envs import gl
    from arena_eval.sim_worker.envs.errors import GLUnavailable

    saved = os.environ.get("MUJOCO_GL")
    try:
        gl.prepare("probe")
        return None
    except GLUnavailable as exc:
        return str(exc)
    finally:
        if saved is None:
            os.environ.pop("MUJOCO_GL", None)
        else:
            os.environ["MUJOCO_GL"] = saved
