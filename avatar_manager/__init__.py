"""The avatar manager: a REST control plane and the supervisor of the lip-sync worker fleet."""

__version__ = "2.0.0"
