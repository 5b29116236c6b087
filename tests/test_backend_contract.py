"""The manager as the existing backend sees it: a user who leaves avatar A and picks B at
MAX_AVATARS, /avatar/list for its resync, /status's GPU fields, is_new and per-caller connection
counts, stopping by a joiner's id, argv safety, the time budget of a start, and /openapi.json.
Real managers (supervisor + gunicorn), the fault-injection worker, a real redis-server."""
from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import requests
from conftest import ROOT
from harness.processes import gone, wait_for

from avatar_manager.fleet import Fleet
from avatar_manager.settings import Settings

FAKE = "tests.fake_worker"
FAKE_NVML_DIR = ROOT / "tests" / "fake_nvml"


def ok(response: requests.Response) -> dict | list | None:
    assert response.status_code == 200, f"{response.status_code}: {response.text}"
    assert response.json()["status"] == "success", response.text
    return response.json().get("data")


def error(response: requests.Response, code: int) -> dict:
    assert response.status_code == code, f"expected {code}, got {response.status_code}: {response.text}"
    body = response.json()
    assert body["status"] == "error" and body["message"].strip(), body
    return body


def names(m, path: str = "/avatar/list") -> list[str]:
    return sorted(i["real_avatar_name"] for i in ok(m.get(path)))


def fake_manager(manager, avatars: list[str], **env):
    m = manager(start=False, WORKER_MODULE=FAKE, **{k: str(v) for k, v in env.items()})
    for name in avatars:
        m.avatar(name)
    return m.start()


# --- 1: eviction at capacity ----------------------------------------------------------------------

def test_a_user_switching_avatars_at_capacity_evicts_the_longest_idle(manager, store_env):
    m = fake_manager(manager, ["a", "c", "busy", "b"], MAX_AVATARS=3, IDLE_TIMEOUT=300, **store_env)
    a = ok(m.start_avatar("a_user_1", "a"))
    c = ok(m.start_avatar("c_user_1", "c"))
    busy = ok(m.start_avatar("busy_user_1", "busy"))
    ok(m.post("/avatar/disconnect", {"avatar_name": "a"}))  # idle first: the longest idle
    ok(m.post("/avatar/disconnect", {"avatar_name": "c"}))
    assert {i["real_avatar_name"]: i["state"] for i in ok(m.get("/avatar/list"))} == {
        "a": "RUNNING", "c": "RUNNING", "busy": "RUNNING"}

    b = ok(m.start_avatar("b_user_1", "b"))
    assert b["is_new"] is True and b["state"] == "RUNNING" and b["connections"] == 1
    assert names(m) == ["b", "busy", "c"]
    assert gone(a["pid"]) and b["port"] == a["port"]  # a's slot and port went to b
    assert sorted(m.workers().values()) == ["b", "busy", "c"]
    assert not gone(c["pid"]) and not gone(busy["pid"])


def test_at_capacity_with_nothing_idle_a_start_is_refused_and_changes_nothing(manager, store_env):
    m = fake_manager(manager, ["a", "watched", "b"], MAX_AVATARS=2, IDLE_TIMEOUT=300,
                     HEALTH_CHECK_INTERVAL=0.2, **store_env)
    # "watched" has no declared connection but a live WebRTC session: not idle, never evicted.
    (m.data_dir / "avatars" / "watched" / "config.json").write_text(json.dumps({"sessions": 1}))
    ok(m.start_avatar("a_user_1", "a"))
    watched = ok(m.start_avatar("watched_user_1", "watched"))
    wait_for(lambda: m.info("watched")["sessions"] == 1, what="the supervisor to see watched's session")
    ok(m.post("/avatar/disconnect", {"avatar_name": "watched"}))
    assert m.info("watched")["connections"] == 0

    full = error(m.start_avatar("b_user_1", "b"), 503)
    assert full["reason"] == "capacity" and "MAX_AVATARS=2" in full["message"], full
    assert names(m) == ["a", "watched"] and m.info("b") is None
    assert sorted(m.workers().values()) == ["a", "watched"] and not gone(watched["pid"])


def test_concurrent_starts_at_capacity_never_exceed_it(manager, store_env):
    m = fake_manager(manager, ["old1", "old2", "b", "c", "d"], MAX_AVATARS=2, IDLE_TIMEOUT=300, **store_env)
    for name in ("old1", "old2"):
        ok(m.start_avatar(f"{name}_user_1", name))
        ok(m.post("/avatar/disconnect", {"avatar_name": name}))
    most: list[int] = []
    done = threading.Event()

    def sample() -> None:  # the worker processes alive at each moment, throughout
        while not done.is_set():
            most.append(len(m.workers()))

    sampler = threading.Thread(target=sample)
    sampler.start()
    barrier = threading.Barrier(6)

    def start(i: int) -> requests.Response:
        name = "bcd"[i % 3]
        barrier.wait(timeout=30)
        return m.start_avatar(f"{name}_user_{i}", name)

    try:
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(start, range(6)))
    finally:
        done.set()
        sampler.join(timeout=30)
    assert max(most) <= 2, most
    assert all(r.status_code in (200, 503) for r in answers), [r.text for r in answers]
    started = [r.json()["data"] for r in answers if r.status_code == 200]
    assert started, [r.text for r in answers]
    listed = ok(m.get("/avatar/list?all=1"))
    assert len(listed) <= 2 and len(m.workers()) == len(listed)
    # Every 200 is on an instance that runs and counts it; is_new once per instance.
    running = {i["real_avatar_name"]: i for i in listed}
    for answer in started:
        assert answer["real_avatar_name"] in running and answer["state"] == "RUNNING"
    for name, instance in running.items():
        mine = [a for a in started if a["real_avatar_name"] == name]
        if name in ("b", "c", "d"):
            assert sum(a["is_new"] for a in mine) == 1
            assert sorted(a["connections"] for a in mine) == list(range(1, instance["connections"] + 1))
    for r in answers:
        if r.status_code == 503:
            assert r.json()["reason"] in ("capacity", "unavailable"), r.text


def test_two_users_of_one_new_avatar_at_capacity_evict_one_instance_not_two(manager, store_env):
    m = fake_manager(manager, ["old1", "old2", "b"], MAX_AVATARS=2, IDLE_TIMEOUT=300, **store_env)
    for name in ("old1", "old2"):
        ok(m.start_avatar(f"{name}_user_1", name))
        ok(m.post("/avatar/disconnect", {"avatar_name": name}))
    barrier = threading.Barrier(2)

    def start(i: int) -> requests.Response:
        barrier.wait(timeout=30)
        return m.start_avatar(f"b_user_{i}", "b")

    with ThreadPoolExecutor(2) as pool:
        answers = [ok(r) for r in pool.map(start, (1, 2))]
    assert sorted(a["is_new"] for a in answers) == [False, True]
    assert sorted(a["connections"] for a in answers) == [1, 2]
    assert names(m) == ["b", "old2"]  # old1, idle the longest, made room; old2 stays warm


# --- 2: /avatar/list for the backend's resync; everything in ?all=1 and /status -------------------

def test_the_list_holds_only_instances_with_a_port_and_a_process(manager):
    m = manager(start=False, WORKER_MODULE=FAKE, STARTUP_TIMEOUT=2)
    m.avatar("crash", fault="crash")
    m.avatar("fine")
    m.start()
    assert "crashing" in error(m.start_avatar("crash_user_1", "crash"), 503)["message"]
    fine = ok(m.start_avatar("fine_user_1", "fine"))

    listed = ok(m.get("/avatar/list"))
    assert [(i["real_avatar_name"], i["port"], i["pid"]) for i in listed] == [("fine", fine["port"], fine["pid"])]
    assert m.get("/avatar/list").json()["count"] == 1
    for flag in ("1", "true"):
        everything = {i["real_avatar_name"]: (i["state"], i["port"]) for i in ok(m.get(f"/avatar/list?all={flag}"))}
        assert everything == {"crash": ("FAILED", None), "fine": ("RUNNING", fine["port"])}
    assert names(m, "/avatar/list?all=0") == ["fine"]
    assert "all" in error(m.get("/avatar/list?all=yes-please"), 400)["message"]
    status = ok(m.get("/status"))["manager"]
    assert {i["real_avatar_name"]: i["state"] for i in status["avatars"]} == {"crash": "FAILED", "fine": "RUNNING"}
    assert status["states"]["FAILED"] == 1


# --- 3: /status's GPU entries carry the existing manager's names -----------------------------------

def test_status_gpu_entries_have_the_existing_managers_fields(manager):
    world = {"gpus": [{"name": "L4", "total_mb": 24576, "free_mb": 20480, "temperature_c": 48,
                       "utilization_percent": 12, "power_w": 35.5, "power_limit_w": 72}]}
    m = manager(PYTHONPATH=str(FAKE_NVML_DIR), FAKE_NVML=json.dumps(world))
    [gpu] = ok(m.get("/status"))["gpu"]
    assert {k: gpu[k] for k in ("gpu_id", "name", "memory", "temperature_celsius", "gpu_utilization_percent",
                                "power_draw_watts", "power_limit_watts")} == {
        "gpu_id": 0, "name": "L4", "memory": {"total_gb": 24.0, "used_gb": 4.0, "free_gb": 20.0,
                                              "usage_percent": 16.7},
        "temperature_celsius": 48, "gpu_utilization_percent": 12, "power_draw_watts": 35.5,
        "power_limit_watts": 72.0}


# --- 4: is_new once, each caller its own count -----------------------------------------------------

def test_concurrent_cold_starts_count_one_each_and_one_is_new(manager):
    m = manager(start=False, WORKER_MODULE=FAKE)
    m.avatar("slowish", fault="slow:1")
    m.start()
    barrier = threading.Barrier(3)

    def start(i: int) -> requests.Response:
        barrier.wait(timeout=30)
        return m.start_avatar(f"slowish_user_{i}", "slowish")

    with ThreadPoolExecutor(3) as pool:
        answers = [ok(r) for r in pool.map(start, (1, 2, 3))]
    assert sorted(a["connections"] for a in answers) == [1, 2, 3]
    assert [a["is_new"] for a in answers].count(True) == 1
    assert len({a["pid"] for a in answers}) == 1
    assert m.info("slowish")["connections"] == 3
    warm = ok(m.start_avatar("slowish_user_4", "slowish"))
    assert (warm["is_new"], warm["connections"]) == (False, 4)


# --- 5: a joiner's id cannot stop the shared instance ---------------------------------------------

def test_stop_with_a_joiners_id_is_a_conflict_and_changes_nothing(manager):
    m = fake_manager(manager, ["demo"], IDLE_TIMEOUT=300)
    first = ok(m.start_avatar("demo_user_1", "demo"))
    ok(m.start_avatar("demo_user_2", "demo"))

    refused = error(m.post("/avatar/stop", {"avatar_id": "demo_user_2"}), 409)
    assert "demo_user_1" in refused["message"], refused
    after = m.info("demo")
    assert (after["state"], after["pid"], after["connections"]) == ("RUNNING", first["pid"], 2)
    assert not gone(first["pid"])

    # Without force a joiner's stop is its own disconnect, as the seed had it.
    assert ok(m.post("/avatar/stop", {"avatar_id": "demo_user_2", "force": False}))["connections"] == 1
    ok(m.post("/avatar/stop", {"avatar_id": "demo_user_1"}))  # the instance id stops it
    assert gone(first["pid"]) and m.info("demo") is None
    ok(m.start_avatar("demo_user_3", "demo"))
    ok(m.post("/avatar/stop", {"avatar_id": "demo"}))  # so does the avatar's name
    assert m.info("demo") is None


# --- 6: a start ends before the backend gives up -------------------------------------------------

def test_the_default_start_wait_is_below_the_backends_60_seconds(tmp_path):
    settings = Settings.from_env({"AVATAR_DATA_DIR": str(tmp_path)})
    wait = Fleet(settings, store=None).start_wait
    assert wait == settings.startup_timeout + 2 * settings.stop_timeout + 5
    assert wait < 60, wait


# --- 7: no user value is read as an option --------------------------------------------------------

def test_form_values_that_look_like_options_register_and_start(manager):
    m = manager(WORKER_MODULE=FAKE)
    with open(ROOT / "assets" / "astronaut.png", "rb") as photo:
        answer = requests.post(m.url + "/avatar/register", timeout=120, files={"file": ("a.png", photo)},
                               data={"avatar_name": "-astro", "user_id": "--name=x", "timbre": "--help",
                                     "description": "--job=nope\nsecond line"})
    record = ok(answer)
    assert (record["name"], record["owner"], record["timbre"]) == ("-astro", "--name=x", "--help")
    assert json.loads((m.data_dir / "avatars" / "-astro" / "config.json").read_text())["timbre"] == "--help"

    started = ok(m.start_avatar("-astro"))
    health = requests.get(f"http://127.0.0.1:{started['port']}/health", timeout=5).json()
    assert {"--avatar_id=-astro", "--REF_FILE=--help"} <= set(health["argv"]), health["argv"]


def test_form_values_with_control_characters_are_refused(manager):
    m = manager(WORKER_MODULE=FAKE)
    for field, value in (("user_id", "a\x00b"), ("timbre", "x\ny"), ("user_id", "u" * 129)):
        answer = requests.post(m.url + "/avatar/register", timeout=30, files={"file": ("a.png", b"x")},
                               data={"avatar_name": "nope", field: value})
        assert field in error(answer, 400)["message"]
    assert ok(m.get("/avatar/avatars")) == [] and not (m.data_dir / "avatars" / "nope").exists()


# --- 8: the OpenAPI document -----------------------------------------------------------------------

def test_openapi_documents_every_route_and_needs_no_token(manager):
    m = manager(start=False, API_TOKEN="s3cret")
    m.headers = {"Authorization": "Bearer s3cret"}
    m.start()
    assert requests.get(m.url + "/status", timeout=10).status_code == 401
    answer = requests.get(m.url + "/openapi.json", timeout=10)
    assert answer.status_code == 200
    document = answer.json()
    assert document["openapi"].startswith("3.") and document["security"] == [{"token": []}]
    assert document["components"]["securitySchemes"]["token"]["scheme"] == "bearer"
    paths = document["paths"]
    expected = {
        "/health": {"get"}, "/ready": {"get"}, "/status": {"get"}, "/metrics": {"get"}, "/tts": {"get"},
        "/avatar/start": {"post"}, "/avatar/disconnect": {"post"}, "/avatar/stop": {"post"},
        "/avatar/restart": {"post"}, "/avatar/stop-all": {"post"}, "/avatar/list": {"get"},
        "/avatar/info/{key}": {"get"}, "/": {"get"}, "/console/config": {"get"}, "/avatar/register": {"post"},
        "/avatar/jobs/{job_id}": {"get"}, "/avatar/avatars": {"get"}, "/avatar/{name}/preview": {"get"},
        "/avatar/{name}": {"delete"}, "/openapi.json": {"get"},
    }
    for path, methods in expected.items():
        assert set(paths.get(path, {})) >= methods, path
    # Every reference resolves to something the document holds.
    text = json.dumps(document)
    for ref in {part.split('"')[0] for part in text.split('"$ref": "')[1:]}:
        kind, name = ref.removeprefix("#/components/").split("/")
        assert name in document["components"][kind], ref
    start = paths["/avatar/start"]["post"]
    assert {"200", "400", "401", "404", "413", "503"} <= set(start["responses"])
    register = document["components"]["schemas"]["Register"]["properties"]
    assert {"tts_model", "timbre", "asr_model", "language", "engine"} <= set(register)
    assert "409" in paths["/avatar/stop"]["post"]["responses"]
    assert paths["/health"]["get"]["security"] == [] and paths["/openapi.json"]["get"]["security"] == []
