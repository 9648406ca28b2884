from __future__ import annotations

import pytest

from rtk_archiver.settings import SettingsError, load_settings

BASE = {"CLOUDFLARE_API_TOKEN": "tok-SECRET-123", "CLOUDFLARE_ACCOUNT_ID": "acc", "REALTIMEKIT_APP_ID": "app"}


@pytest.fixture
def env(monkeypatch):
    for k in list(BASE) + ["CLOUDFLARE_BASE_URL", "ARCHIVE_DEFAULT_DESTINATION", "ARCHIVE_MAX_CONCURRENT"]:
        monkeypatch.delenv(k, raising=False)
    return monkeypatch


def test_missing_variables_are_named(env):
    env.setenv("CLOUDFLARE_API_TOKEN", "tok-SECRET-123")
    with pytest.raises(SettingsError) as info:
        load_settings()
    msg = str(info.value)
    assert "CLOUDFLARE_ACCOUNT_ID is not set" in msg and "REALTIMEKIT_APP_ID is not set" in msg
    assert "tok-SECRET-123" not in msg


@pytest.mark.parametrize(
    "var, value, fragment",
    [
        ("ARCHIVE_DEFAULT_DESTINATION", "ftp://x", "ARCHIVE_DEFAULT_DESTINATION"),
        ("CLOUDFLARE_BASE_URL", "api.example", "CLOUDFLARE_BASE_URL"),
        ("ARCHIVE_MAX_CONCURRENT", "0", "ARCHIVE_MAX_CONCURRENT"),
        ("CLOUDFLARE_ACCOUNT_ID", "x" * 33, "CLOUDFLARE_ACCOUNT_ID"),
        ("CLOUDFLARE_API_TOKEN", "  ", "CLOUDFLARE_API_TOKEN"),
    ],
)
def test_invalid_values_are_named(env, var, value, fragment):
    for k, v in BASE.items():
        env.setenv(k, v)
    env.setenv(var, value)
    with pytest.raises(SettingsError, match=fragment) as info:
        load_settings()
    assert "tok-SECRET-123" not in str(info.value)


def test_defaults(env):
    for k, v in BASE.items():
        env.setenv(k, v)
    s = load_settings()
    assert s.cloudflare_base_url == "https://api.cloudflare.com/client/v4"
    assert s.archive_lookback_days == 8 and not s.sftp_trust_unknown_hosts
    assert "tok-SECRET-123" not in repr(s)
