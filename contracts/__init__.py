"""What the manager, the worker and the TTS server share and none of them owns. Imports neither
OpenCV nor torch, so every service can use it."""
