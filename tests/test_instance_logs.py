"""Instance logs are pruned (LOG_RETENTION_DAYS) when a worker starts, against a real manager:
old logs go, with their rotated `.1`; a running instance's log and each avatar's newest stay."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from avatar_manager.logs import prune_instance_logs
from harness.manager import Manager

DAY = 86400


def old_log(folder: Path, name: str, avatar: str, days: float) -> Path:
    """An instance log as procs.spawn starts one, last written `days` ago."""
    path = folder / name
    path.write_text(f"--- 2026-01-01 00:00:00 starting: python -m lipsync_worker --avatar_id={avatar} "
                    f"--listenport=1\nsome output\n")
    age(path, days)
    return path


def age(path: Path, days: float) -> None:
    then = time.time() - days * DAY
    os.utime(path, (then, then))


def test_old_logs_go_and_each_avatars_newest_stays(tmp_path):
    older = old_log(tmp_path, "avatar_a_user_1_9001.log", "a", 40)
    rotated = tmp_path / "avatar_a_user_1_9001.log.1"
    rotated.write_text("the log before it\n")
    newest = old_log(tmp_path, "avatar_a_user_2_9002.log", "a", 20)
    recent = old_log(tmp_path, "avatar_b_user_1_9003.log", "b", 1)
    recent_older = old_log(tmp_path, "avatar_b_user_0_9004.log", "b", 10)
    running = old_log(tmp_path, "avatar_c_user_1_9005.log", "c", 90)
    running_older = old_log(tmp_path, "avatar_c_user_0_9006.log", "c", 100)
    manager_log = tmp_path / "manager.log"
    manager_log.write_text("not an instance log\n")
    age(manager_log, 100)

    removed = prune_instance_logs(tmp_path, keep={running}, days=7)

    assert sorted(removed) == sorted([older, rotated, recent_older, running_older])
    assert sorted(tmp_path.iterdir()) == sorted([newest, recent, running, manager_log])


def test_retention_zero_keeps_only_the_running_and_the_newest(tmp_path):
    first = old_log(tmp_path, "avatar_a_1_9001.log", "a", 0.001)
    second = old_log(tmp_path, "avatar_a_2_9002.log", "a", 0)
    assert prune_instance_logs(tmp_path, keep=set(), days=0) == [first]
    assert second.exists()


@pytest.fixture
def manager(tmp_path):
    m = Manager(tmp_path, {"WORKER_MODULE": "tests.fake_worker", "LOG_RETENTION_DAYS": "7"})
    m.avatar("a")
    m.avatar("b")
    with m:
        yield m


def test_a_worker_start_prunes_old_logs_but_not_a_running_instances(manager):
    started = manager.post("/avatar/start", {"avatar_id": "a_user_1"})
    assert started.status_code == 200, started.text
    port = started.json()["data"]["port"]
    running = manager.log_dir / f"avatar_a_user_1_{port}.log"
    assert running.exists(), sorted(p.name for p in manager.log_dir.iterdir())
    age(running, 30)  # a quiet worker: its log untouched for a month, and still it stays
    newer = old_log(manager.log_dir, "avatar_a_user_7_1.log", "a", 20)
    oldest = old_log(manager.log_dir, "avatar_a_user_8_2.log", "a", 40)
    gone_avatar = old_log(manager.log_dir, "avatar_gone_3.log", "gone", 400)

    other = manager.post("/avatar/start", {"avatar_id": "b"})  # a spawn: the logs are pruned
    assert other.status_code == 200, other.text

    names = sorted(p.name for p in manager.log_dir.iterdir())
    assert not oldest.exists(), names
    assert running.exists() and newer.exists() and gone_avatar.exists(), names
    assert (manager.log_dir / f"avatar_b_{other.json()['data']['port']}.log").exists(), names
    assert "removed 1 instance log(s)" in (manager.log_dir / "manager.log").read_text()
