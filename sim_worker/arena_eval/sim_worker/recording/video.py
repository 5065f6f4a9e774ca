"""One episode's camera frames as an mp4, encoded by PyAV (FFmpeg's libraries).

Why PyAV: it ships FFmpeg in its wheel (no system ffmpeg on sim nodes) and the same library
reads the file back (tests count frames with it). H.264 (libx264) in yuv420p is what browsers
play in the HTML report; MPEG-4 part 2 is the fallback where a build lacks libx264. Odd
frame sizes are padded by one pixel (yuv420p needs even sizes). Every frame is one video
frame, so the frame count equals the episode length.
"""

from __future__ import annotations

import io
from fractions import Fraction

import numpy as np

from arena_eval.broker.errors import ConfigError

CODECS = ("libx264", "mpeg4")


def encode_mp4(frames: np.ndarray, fps: float) -> bytes:
    """``frames`` (T, H, W, 3) uint8 -> the bytes of an mp4 with T frames at ``fps``."""
    try:
        import av
    except ImportError:  # pragma: no cover - depends on the install
        raise ConfigError("--video needs PyAV (the [record] extra): pip install av") from None
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(
            f"video frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}"
        )
    t, h, w, _ = frames.shape
    frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream(_codec(av), rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    if t == 0:
        raise ValueError("an episode with no frame has no video")
    return buf.getvalue()


def _codec(av: object) -> str:
    available: set[str] = getattr(av, "codecs_available", set())
    for name in CODECS:
        if name in available:
            return name
    return CODECS[-1]
