"""Before a run that ends in `--push-to-hub`, the Hub is asked whether the token may write there (`hub/access.py`):
a refused, read-only or misdirected token stops the command before it expands or trains, not after."""

from __future__ import annotations

import pytest
from fake_hub import TOKEN, fake_hub_fixture, no_backoff_fixture  # noqa: F401 (fixtures)

from grow_cli.hub.access import why_not_writable


def _me(role=None, *, scoped=None, orgs=(), name="tester"):
    token = {"displayName": "ci", **({"role": role} if role else {})}
    if scoped is not None:
        token["fineGrained"] = {"global": [], "scoped": scoped}
    return {"type": "user", "name": name, "orgs": list(orgs), "auth": {"type": "access_token", "accessToken": token}}


def _grant(kind, name, *permissions):
    return {"entity": {"type": kind, "name": name}, "permissions": list(permissions)}


def test_a_write_token_in_its_own_namespace_or_an_org_it_writes_to_may_push():
    acme = {"name": "acme", "roleInOrg": "write"}
    for me, repo in (
        (_me("write"), "tester/x"),
        (_me("write"), "x"),  # no namespace: the account's own
        (_me("write", orgs=[acme]), "acme/x"),
        (_me("fineGrained", scoped=[_grant("user", "tester", "repo.content.read", "repo.write")]), "x"),
        (_me("fineGrained", scoped=[_grant("model", "acme/x", "repo.write")], orgs=[acme]), "acme/x"),
        ({"name": "tester"}, "tester/x"),  # an answer without its token's details is not held against it
    ):
        assert why_not_writable(me, repo) is None, (me, repo)


def test_what_cannot_push_is_named():
    read_only = why_not_writable(_me("read"), "tester/x")
    assert read_only and "the token 'ci' is read-only" in read_only and "write token" in read_only
    reads_only = _me("fineGrained", scoped=[_grant("user", "tester", "repo.content.read")])
    assert "no write permission for tester/x" in (why_not_writable(reads_only, "x") or "")
    other_repo = _me("fineGrained", scoped=[_grant("model", "tester/y", "repo.write")])
    assert "no write permission" in (why_not_writable(other_repo, "tester/x") or "")
    stranger = why_not_writable(_me("write"), "acme/x")
    assert stranger and "'acme' is neither the account tester nor one of its organizations" in stranger
    assert "push to tester/x" in stranger
    reader = why_not_writable(_me("write", orgs=[{"name": "acme", "roleInOrg": "read"}]), "acme/x")
    assert reader and "may only read in the organization 'acme'" in reader


def test_expand_with_a_read_only_token_stops_before_it_expands(fake_hub, tiny_checkpoints, cli, tmp_path):
    fake_hub.access_token = {"displayName": "ci", "role": "read"}
    out = tmp_path / "out"
    result = cli("expand", tiny_checkpoints("llama"), out, "--layers", "8", "--push-to-hub", "acme/x", "--token", TOKEN)
    assert result.code != 0 and not out.exists()
    assert result.stderr.startswith("error: the push to acme/x at the end of this run would fail: the token 'ci'")
    assert len(result.stderr.strip().splitlines()) == 1 and TOKEN not in result.stderr
    assert fake_hub.paths_requested("GET", "/api/whoami-v2") and not fake_hub.paths_requested("POST")


def test_train_stage_with_a_stranger_namespace_stops_before_it_trains(fake_hub, cli, tmp_path):
    from tinylm import save_tiny_lm, write_plays

    fake_hub.orgs = []
    model = save_tiny_lm(tmp_path / "model")
    text = write_plays(tmp_path / "text", count=1, chars=5_000)
    out = tmp_path / "trained"
    args = ["train-stage", model, "--data", text, "--out", out, "--max-steps", 1, "--seq-len", 32]
    result = cli(*args, "--push-to-hub", "acme/trained", "--token", TOKEN)
    assert result.code != 0 and not out.exists(), result.stderr
    assert "'acme' is neither the account tester nor one of its organizations" in result.stderr


def test_a_hub_that_cannot_be_asked_lets_the_run_go_on(fake_hub, tiny_checkpoints, cli, tmp_path, no_backoff):
    """No answer is no refusal: the push at the end may work (here it does), so the run goes on with a note."""
    fake_hub.fail("GET", "/whoami-v2", 503, times=100)
    out = tmp_path / "out"
    args = ("--layers", "8", "--push-to-hub", "acme/x", "--token", TOKEN)
    result = cli("expand", tiny_checkpoints("llama"), out, *args)
    assert result.code == 0, result.stderr
    assert "note: could not ask the Hub whether the token may push to acme/x (HfHubHTTPError" in result.stderr
    assert "config.json" in fake_hub.files("acme/x")
    quiet = cli("expand", tiny_checkpoints("llama"), tmp_path / "quiet", *args, "-q")
    assert quiet.code == 0 and "note:" not in quiet.stderr, quiet.stderr


@pytest.mark.parametrize("reject", [True, False])
def test_a_refused_token_stops_the_run_and_a_valid_one_does_not(fake_hub, tiny_checkpoints, cli, tmp_path, reject):
    """The negative control of the 401 refusal: the same command with the token accepted expands and pushes."""
    fake_hub.reject_tokens = reject
    out = tmp_path / "out"
    result = cli("expand", tiny_checkpoints("llama"), out, "--layers", "8", "--push-to-hub", "acme/x", "--token", TOKEN)
    assert (result.code != 0) is reject and out.exists() is not reject, result.stderr
    assert ("refused the token (HTTP 401: invalid or revoked)" in result.stderr) is reject
