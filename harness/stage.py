"""A viewer of the worker's Stage without a peer connection, so tests can run its ticks."""
from __future__ import annotations

from lipsync_worker.clips import ClipPlayer
from lipsync_worker.media import QueueTrack
from lipsync_worker.speech import SpeechBuffer


class FakeViewer:
    """What the Stage needs of a session (media.Viewer); nobody reads its tracks."""

    def __init__(self, engine_state: object = None) -> None:
        self.speech = SpeechBuffer()
        self.engine_state = engine_state
        self.video, self.audio = QueueTrack("video"), QueueTrack("audio")
        self.tail = self.video_pts = self.audio_pts = 0
        self.on_shared_stream = False
        self.clip, self.recording = ClipPlayer(), None
