"""MuseTalk 1.5: weights on disk, the models, streaming audio features and avatar material; the
engine that runs them is engines/musetalk.py.

No torch at import time: the manager and the doctor read `weights` without paying for it.
"""
