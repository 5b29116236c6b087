"""CORS on the manager (flask-cors, every route, preflights included) and the same origins handed to
its workers: CORS_ORIGINS read through contracts.cors (default any origin while no API_TOKEN is
set, none once it is, unless listed). Workers are the fake one; the browser side is in
test_cors_browser.py."""
from __future__ import annotations

import psutil
import pytest
import requests

from harness.avatars import make_avatar

ROUTES = ("/avatar/start", "/avatar/demo/offer", "/avatar/demo/sse", "/avatar/list", "/status")


def preflight(m, path: str, origin: str) -> requests.Response:
    return requests.options(m.url + path, timeout=10, headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})


def allowed(response: requests.Response) -> str | None:
    return response.headers.get("Access-Control-Allow-Origin")


def worker_env(m, **env) -> dict[str, str]:
    """The environment the manager gave the avatar's worker."""
    started = m.start_avatar("demo_user_1", "demo")
    assert started.status_code == 200, started.text
    return psutil.Process(started.json()["data"]["pid"]).environ()


@pytest.fixture
def cors_manager(manager):
    def start(**env):
        m = manager(start=False, WORKER_MODULE="tests.fake_worker", **env)
        if "API_TOKEN" in env:
            m.headers = {"Authorization": f"Bearer {env['API_TOKEN']}"}
        make_avatar(m.data_dir, "demo")
        return m.start()
    return start


def test_without_a_token_any_origin_may_call_the_manager_and_its_workers(cors_manager):
    m = cors_manager()
    for path in ROUTES:
        answer = preflight(m, path, "http://elsewhere.test")
        assert answer.status_code == 200 and allowed(answer) == "*", path
        assert "authorization" in answer.headers["Access-Control-Allow-Headers"].lower()
    assert allowed(requests.get(m.url + "/avatar/list", headers={"Origin": "http://elsewhere.test"}, timeout=10)) == "*"
    refused = requests.post(m.url + "/avatar/start", json={}, headers={"Origin": "http://elsewhere.test"}, timeout=10)
    assert refused.status_code == 400 and allowed(refused) == "*"   # errors too, so a page can read why
    assert worker_env(m)["CORS_ORIGINS"] == "*"


def test_listed_origins_and_no_others(cors_manager):
    m = cors_manager(CORS_ORIGINS="http://app.test, http://127.0.0.1:9999/")
    for path in ROUTES:
        answer = preflight(m, path, "http://app.test")
        assert allowed(answer) == "http://app.test" and "Origin" in answer.headers["Vary"], path
        assert allowed(preflight(m, path, "http://other.test")) is None, path
    assert allowed(preflight(m, "/status", "http://127.0.0.1:9999")) == "http://127.0.0.1:9999"
    assert worker_env(m)["CORS_ORIGINS"] == "http://app.test,http://127.0.0.1:9999"


def test_with_a_token_no_origin_unless_listed_and_the_worker_gets_the_token(cors_manager):
    m = cors_manager(API_TOKEN="s3cret")
    for path in ROUTES:
        assert allowed(preflight(m, path, "http://elsewhere.test")) is None, path
    answer = requests.get(m.url + "/avatar/list", headers={**m.headers, "Origin": "http://elsewhere.test"}, timeout=10)
    assert answer.status_code == 200 and allowed(answer) is None
    env = worker_env(m)
    assert env["CORS_ORIGINS"] == "none" and env["API_TOKEN"] == "s3cret"   # it requires the token


def test_with_a_token_a_listed_origin_may_call_with_it(cors_manager):
    m = cors_manager(API_TOKEN="s3cret", CORS_ORIGINS="http://app.test")
    answer = preflight(m, "/avatar/demo/offer", "http://app.test")   # a preflight carries no token
    assert answer.status_code == 200 and allowed(answer) == "http://app.test"
    without = requests.get(m.url + "/avatar/list", headers={"Origin": "http://app.test"}, timeout=10)
    assert without.status_code == 401 and allowed(without) == "http://app.test"
    assert worker_env(m)["CORS_ORIGINS"] == "http://app.test"


def test_a_cors_setting_that_is_not_an_origin_stops_the_manager_with_the_reason(manager):
    m = manager(start=False, CORS_ORIGINS="app.test")
    with pytest.raises(RuntimeError, match="CORS_ORIGINS") as refused:
        m.start()
    assert "exited with 2" in str(refused.value)
