"""systemd's Type=notify: READY=1 once the manager can serve, STOPPING=1 when told to stop."""
from __future__ import annotations

import socket
from configparser import ConfigParser

from conftest import ROOT


def test_the_manager_tells_systemd_when_it_is_ready_and_when_it_stops(manager, tmp_path):
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        address = str(tmp_path / "notify.sock")
        listener.bind(address)
        listener.settimeout(30)
        m = manager(start=False, WORKER_MODULE="tests.fake_worker", NOTIFY_SOCKET=address)
        m.start()
        assert listener.recv(256) == b"READY=1"
        assert m.get("/ready").status_code == 200
        m.stop()
        assert listener.recv(256) == b"STOPPING=1"


def test_the_unit_file_runs_the_manager_as_a_notify_service():
    unit = ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read(ROOT / "deploy" / "avatar-fleet.service")
    service = unit["Service"]
    assert service["Type"] == "notify"
    assert service["ExecStart"].endswith("-m avatar_manager")
    assert service["KillMode"] == "process"
