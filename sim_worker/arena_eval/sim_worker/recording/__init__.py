"""Sim-side recording of episodes (``--record``/``--video``): frames kept while an episode
runs (``capture``), written once it ends as one LeRobot-layout episode (``writer``), with an
mp4 per camera for filmed episodes (``video``). The layout and the reader are in
``arena_eval.broker.dataset`` so readers need not import the sim worker."""

from arena_eval.sim_worker.recording.capture import Trajectory, TrajectoryBuffer
from arena_eval.sim_worker.recording.writer import EpisodeWriter

__all__ = ["EpisodeWriter", "Trajectory", "TrajectoryBuffer"]
