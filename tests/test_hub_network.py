"""A Hub that stalls or fails for a moment: every wait bounded by the documented settings, transient failures tried
again a bounded number of times (grow_cli/hub/network.py), against the fake Hub."""

from __future__ import annotations

import threading

import pytest
from fake_hub import fake_hub_fixture, no_backoff_fixture  # noqa: F401 (fixtures)
from tiny_models import save_tiny

REPO = "acme/tiny-llama"
RETRY_NOTE = "trying again in"
GUARD_S = 45  # far above what each run below needs once bounded, far below the 60 s the client's retries waited


@pytest.fixture
def hub_repo(fake_hub, tmp_path):
    fake_hub.add_folder(REPO, save_tiny("llama", tmp_path / "tiny"))
    return REPO


@pytest.fixture
def short_etag_timeout(monkeypatch):
    """HF_HUB_ETAG_TIMEOUT at half a second, where the client (which reads the variable at import) and grow read it."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", 0.5)


def finished(run):
    """`run()`'s result, or None when it is still waiting for the Hub GUARD_S seconds later (it then ends with the
    fake Hub, whose stalled answers end when the test does)."""
    result = []
    worker = threading.Thread(target=lambda: result.append(run()), daemon=True)
    worker.start()
    worker.join(GUARD_S)
    return result[0] if result else None


def shard_of(fake_hub, method: str, contains: str = "-of-") -> str:
    """The file of the first `method` request whose path contains `contains`."""
    return fake_hub.paths_requested(method, contains)[0].rsplit("/", 1)[-1]


@pytest.mark.parametrize("command", ["inspect", "expand"])
def test_a_hub_that_stalls_on_the_repo_listing_is_not_waited_for_forever(
    fake_hub, hub_repo, cli, tmp_path, short_etag_timeout, no_backoff, monkeypatch, command
):
    """`snapshot_download` lists the repo itself, with no timeout: a Hub that answered grow's own listing and then
    stalled on that one held `grow inspect` and `grow expand` until Ctrl-C. Each try now waits HF_HUB_ETAG_TIMEOUT,
    and the files the listing would have named are fetched one by one: the command succeeds."""
    fake_hub.fail("GET", "/tree/", "hang", times=100)
    args = ["inspect", hub_repo] if command == "inspect" else ["expand", hub_repo, tmp_path / "out", "--layers", "8"]
    result = finished(lambda: cli(*args))
    assert result is not None, f"grow {command} still waited for the stalled listing after {GUARD_S} s"
    assert result.code == 0, result.stderr
    if not fake_hub.paths_requested("GET", "/tree/"):
        pytest.skip("this huggingface_hub (1.5 does) names a small repo's files from repo_info: no tree to stall")
    if command == "expand":  # the cache knows main's commit, as after any download
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        assert cli("expand", hub_repo, tmp_path / "again", "--layers", "8").code == 0


@pytest.mark.parametrize("command", ["inspect", "expand"])
def test_a_listing_failure_the_client_lets_out_is_downloaded_file_by_file(
    fake_hub, hub_repo, cli, tmp_path, monkeypatch, command
):
    """huggingface_hub before 2.0 lets a network failure of `snapshot_download`'s own listing of the repo's tree out,
    where 2.x falls back on the cached snapshot: on hub 1.33 the stalled-listing test above ended 'no complete copy is
    in the local cache'. Such a failure is now met as 2.x meets it: the files are fetched one by one."""
    import grow_cli.hub.download as download
    from grow_cli.hub.client import http_client

    def snapshot_download(repo_id, **kwargs):
        listing = http_client.Request("GET", f"{fake_hub.url}/api/models/{repo_id}/tree/main?recursive=True")
        raise http_client.ReadTimeout("timed out", request=listing)

    monkeypatch.setattr(download, "snapshot_download", snapshot_download)
    args = ["inspect", hub_repo] if command == "inspect" else ["expand", hub_repo, tmp_path / "out", "--layers", "8"]
    result = cli(*args)
    assert result.code == 0, result.stderr
    if command == "expand":
        assert (tmp_path / "out" / "config.json").is_file()


def test_a_hub_that_stalls_after_the_listing_ends_in_a_line_naming_the_timeout(
    fake_hub, hub_repo, cli, tmp_path, short_etag_timeout, no_backoff
):
    fake_hub.fail("GET", "/tree/", "hang", times=100)
    fake_hub.fail("HEAD", "/config.json", "hang", times=100)
    result = finished(lambda: cli("expand", hub_repo, tmp_path / "out", "--layers", "8"))
    assert result is not None and result.code == 1
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(
        f"error: the Hub at {fake_hub.url} did not answer in time (ReadTimeout: no answer within "
        "HF_HUB_ETAG_TIMEOUT=0.5 s, the wait for metadata; raise it for a slow Hub) while downloading acme/tiny-llama; "
    ), line
    assert not (tmp_path / "out").exists()


def test_a_stalled_head_waits_as_long_as_hf_hub_etag_timeout_says(
    fake_hub, hub_repo, cli, tmp_path, short_etag_timeout, no_backoff
):
    """A file's HEAD that fails is tried again by the client 6 more times, each of which waited 60 s whatever
    HF_HUB_ETAG_TIMEOUT said: a Hub that stalled there held a download ~6.4 minutes. Each try now waits the setting,
    and grow adds no tries of its own to the client's 7."""
    fake_hub.fail("HEAD", "-of-", "hang", times=100)
    result = finished(lambda: cli("expand", hub_repo, tmp_path / "out", "--layers", "8"))
    assert result is not None, f"the HEAD's tries still waited after {GUARD_S} s"
    line = result.stderr.strip().splitlines()[-1]
    assert result.code == 1 and "HF_HUB_ETAG_TIMEOUT=0.5 s" in line, line
    stalled = shard_of(fake_hub, "HEAD")
    assert len(fake_hub.paths_requested("HEAD", f"/{stalled}")) == 7
    assert RETRY_NOTE not in result.stderr


@pytest.mark.parametrize(
    "method, where, fault, said",
    [
        ("GET", "-of-", 503, "the Hub answered HTTP 503 for {shard} while downloading acme/tiny-llama"),
        ("GET", "-of-", 502, "the Hub answered HTTP 502 for {shard} while downloading acme/tiny-llama"),
        (
            "GET",
            "-of-",
            "reset",
            "the connection to the Hub at {url} broke (ReadError) for {shard} while downloading acme/tiny-llama",
        ),
        ("GET", "/api/models/", 504, "the Hub answered HTTP 504 while listing the files of acme/tiny-llama"),
    ],
)
def test_one_transient_failure_is_tried_again_with_a_line_on_stderr(
    fake_hub, hub_repo, cli, tmp_path, no_backoff, method, where, fault, said
):
    """One 5xx or reset connection on one file (or on the listing) failed the whole download: the client tries a
    file's bytes again only after a stall or a break mid-way, and the listing never. grow tries it again."""
    fake_hub.fail(method, where, fault)
    result = cli("expand", hub_repo, tmp_path / "out", "--layers", "8")
    assert result.code == 0, result.stderr
    notes = [line for line in result.stderr.splitlines() if RETRY_NOTE in line]
    failed = shard_of(fake_hub, method, where) if where == "-of-" else ""
    assert len(notes) == 1, result.stderr
    assert notes[0] == (
        f"note: {said.format(shard=failed, url=fake_hub.url)}; trying again in 1 s (retry 1 of 3, GROW_HUB_RETRIES)"
    )


def test_a_header_range_is_tried_again_after_a_503(fake_hub, hub_repo, cli, no_backoff):
    fake_hub.fail("GET", "-of-", 503)
    result = cli("inspect", hub_repo)
    assert result.code == 0, result.stderr
    assert f"the Hub answered HTTP 503 for {shard_of(fake_hub, 'GET')} while reading" in result.stderr


def test_retries_are_bounded_by_grow_hub_retries(fake_hub, hub_repo, cli, tmp_path, no_backoff, monkeypatch):
    monkeypatch.setenv("GROW_HUB_RETRIES", "2")
    fake_hub.fail("GET", "-of-", 503, times=100)
    result = cli("expand", hub_repo, tmp_path / "out", "--layers", "8")
    line = result.stderr.strip().splitlines()[-1]
    assert result.code == 1 and line.startswith("error: the Hub failed while downloading acme/tiny-llama (HTTP 503")
    assert [n.split("(retry ")[1] for n in result.stderr.splitlines() if RETRY_NOTE in n] == [
        "1 of 2, GROW_HUB_RETRIES)",
        "2 of 2, GROW_HUB_RETRIES)",
    ]
    # the snapshot's try and two more, each asking again only for what had not arrived: the first file refused
    failed = shard_of(fake_hub, "GET")
    assert len(fake_hub.paths_requested("GET", f"/{failed}")) == 3


@pytest.mark.parametrize("status", [403, 404])
def test_a_4xx_is_not_tried_again(fake_hub, hub_repo, cli, tmp_path, no_backoff, status):
    fake_hub.fail("GET", "-of-", status)
    result = cli("expand", hub_repo, tmp_path / "out", "--layers", "8")
    assert result.code == 1 and RETRY_NOTE not in result.stderr
    failed = shard_of(fake_hub, "GET")
    assert len(fake_hub.paths_requested("GET", f"/{failed}")) == 1


@pytest.mark.parametrize("value", ["-1", "many", "11"])
def test_a_bad_grow_hub_retries_is_one_line(fake_hub, hub_repo, cli, tmp_path, monkeypatch, value):
    monkeypatch.setenv("GROW_HUB_RETRIES", value)
    result = cli("expand", hub_repo, tmp_path / "out", "--layers", "8")
    assert result.code == 1
    assert result.stderr.strip() == (
        f"error: GROW_HUB_RETRIES='{value}' is not a number of retries from 0 to 10; set it to 0 to try each request "
        "once, or unset it for 3"
    )


def test_a_python_callers_own_http_client_serves_and_is_left_as_it_was(fake_hub, hub_repo, tmp_path):
    """grow bounded the Hub's waits by replacing huggingface_hub's client factory for the rest of the process: a
    Python caller's own factory (a proxy, certificates) was dropped by the first read from the Hub. grow now adds its
    request hook to the session in use while it reads, and takes it off after."""
    from huggingface_hub.utils import get_session, set_client_factory
    from huggingface_hub.utils._http import default_client_factory

    import grow_cli

    seen = []

    def callers_client():
        client = default_client_factory()
        client.event_hooks = {**client.event_hooks, "request": [*client.event_hooks["request"], seen.append]}
        return client

    set_client_factory(callers_client)
    try:
        layers = grow_cli.inspect(hub_repo)["layers"]
        assert seen, "the caller's client was not used"
        session = get_session()
        assert [h.__name__ for h in session.event_hooks["request"]] == ["hf_request_event_hook", "append"]
        grow_cli.expand(hub_repo, tmp_path / "out", grow_cli.GrowthSpec(layers=2 * layers))
        assert get_session() is session and len(session.event_hooks["request"]) == 2
    finally:
        set_client_factory(default_client_factory)
