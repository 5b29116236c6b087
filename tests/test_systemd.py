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


def read_unit(name: str) -> ConfigParser:
    unit = ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    assert unit.read(ROOT / "deploy" / name), f"deploy/{name} is missing"
    return unit


def test_the_agent_unit_runs_the_agent_role_and_leaves_its_workers_to_it():
    service = read_unit("avatar-fleet-agent.service")["Service"]
    assert service["Type"] == "notify"
    assert service["ExecStart"].endswith("-m avatar_manager serve --role agent")
    # A crashed agent must not take its workers with it; a stopped one stops them itself.
    assert service["KillMode"] == "process"
    assert service["TimeoutStopSec"] == "60"


def test_the_api_unit_runs_the_api_role():
    service = read_unit("avatar-fleet-api.service")["Service"]
    assert service["Type"] in ("exec", "simple", "notify")
    assert service["ExecStart"].endswith("-m avatar_manager serve --role api")
    assert service["KillMode"] == "control-group"


def test_the_role_units_run_like_the_one_host_unit_and_exclude_it():
    one_host = read_unit("avatar-fleet.service")
    for name in ("avatar-fleet-api.service", "avatar-fleet-agent.service"):
        unit = read_unit(name)
        for key in ("User", "Group", "WorkingDirectory", "EnvironmentFile", "Restart"):
            assert unit["Service"][key] == one_host["Service"][key], f"{name}: {key}"
        assert unit["Service"]["ExecStart"].split()[:3] == one_host["Service"]["ExecStart"].split()[:3]
        assert unit["Unit"]["Conflicts"] == "avatar-fleet.service"
        assert unit["Install"]["WantedBy"] == one_host["Install"]["WantedBy"]
