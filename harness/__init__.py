"""What tests and benchmarks share: free ports, a real manager in a subprocess, avatar folders,
WebRTC viewers and a headless browser, a viewer of the Stage alone, upload bombs, and random
MuseTalk models."""
