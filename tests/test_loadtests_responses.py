"""The Locust Responses user, headless against a real gateway: TTFT, inter-token gaps and resume."""

from __future__ import annotations

from .test_loadtests import count, gw, median, run_locust, totals  # noqa: F401 (gw: the module's gateway)


def test_responses_user_times_tokens_and_resumes_exactly(gw, tmp_path):
    """Every stream cut by the gateway (reconnection scenario) resumes with starting_after and must end
    with the exact expected text: a gap, duplicate or wrong text would be a failure row."""
    out = run_locust(tmp_path, gw.url, "--scenario", "reconnection", "--max-tokens", "30", "--ttft-ms", "100",
                     "--itl-ms", "20", "ResponsesUser", users=4, seconds=6)
    stats = out["stats"]
    assert not out["failures"], out["failures"]
    streams = count(stats, "responses", "stream")
    assert streams > 0 and count(stats, "responses", "reconnect") >= streams - 4  # all but those in flight
    assert 60 <= median(stats, "responses", "ttft") <= 250
    assert 12 <= median(stats, "responses", "inter_token") <= 40
    row = totals(out)["responses"]
    assert row["streams"] >= streams and row["gaps"] == 0 and row["duplicates"] == 0
