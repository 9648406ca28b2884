from __future__ import annotations

import pytest

from rtk_archiver.settings import SettingsError, load_settings

BASE = {"CLOUDFLARE_API_TOKEN": "tok-SECRET-123", "CLOUDFLARE_ACCOUNT_ID": "acc", "REALTIMEKIT_APP_ID": "app"}


@pytest.fixture
def env(monkeypatch):
    for k in list(BASE) + ["CLOUDFLARE_BASE_URL", "ARCHIVE_DEFAULT_DESTINATION", "ARCHIVE_MAX_CONCURRENT",
              "ARCHIVE_S3_ENDPOINT_URL", "ARCHIVE_DIGITALOCEAN_ENDPOINT_URL"]:
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


# --- issue 10: every number bounded and finite, no credentials in URL settings ---------------

from datetime import datetime, timedelta, timezone  # noqa: E402
from types import UnionType  # noqa: E402
from typing import Union, get_args, get_origin  # noqa: E402

from annotated_types import Ge, Gt, Le, Lt  # noqa: E402

from rtk_archiver.settings import MAX_RETRY_WAIT_SECONDS, Settings  # noqa: E402


def _is_number(annotation) -> bool:
    if get_origin(annotation) in (Union, UnionType):
        return any(_is_number(a) for a in get_args(annotation) if a is not type(None))
    return annotation in (int, float)


#: every numeric setting, from the model itself: a new one cannot escape these tests
NUMERIC = sorted(name for name, info in Settings.model_fields.items() if _is_number(info.annotation))


def var_of(field: str) -> str:
    info = Settings.model_fields[field]
    return (info.alias or field).upper()


def test_the_numeric_list_is_complete():
    assert len(NUMERIC) >= 15 and "archive_retry_delay_seconds" in NUMERIC and "api_timeout_seconds" in NUMERIC


class SettingsPassed(Exception):
    pass


@pytest.fixture
def base_env(env):
    """Valid settings; a CLI run that gets past them stops at once (no Prefect, no network)."""
    from rtk_archiver import prefect_api

    for k, v in BASE.items():
        env.setenv(k, v)
    env.setenv("CLOUDFLARE_BASE_URL", "http://127.0.0.1:9/client/v4")
    for field in NUMERIC:
        env.delenv(var_of(field), raising=False)

    def refuse(*a, **kw):
        raise SettingsPassed("the settings were accepted")

    env.setattr(prefect_api, "private_prefect_api", refuse)
    return env


@pytest.mark.parametrize("field", NUMERIC)
def test_every_number_has_sane_bounds(field):
    info = Settings.model_fields[field]
    upper = [m for m in info.metadata if isinstance(m, (Le, Lt))]
    lower = [m for m in info.metadata if isinstance(m, (Ge, Gt))]
    assert upper, f"{var_of(field)} has no upper bound"
    assert lower, f"{var_of(field)} has no lower bound"
    high = getattr(upper[0], "le", None) or getattr(upper[0], "lt", None)
    assert high <= 1e9, f"{var_of(field)}: upper bound {high} is not a sane one"


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e30", "-1e30", "1e400", "99999999999999999999999"])
@pytest.mark.parametrize("field", NUMERIC)
def test_every_number_refuses_infinite_and_huge_values(base_env, field, value):
    """inf / 1e30 used to pass (ARCHIVE_RETRY_DELAY_SECONDS, ARCHIVE_*_TIMEOUT_SECONDS) and
    fail later as OverflowError / 'timestamp out of range'."""
    var = var_of(field)
    base_env.setenv(var, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert var in str(info.value)
    assert "tok-SECRET-123" not in str(info.value)


@pytest.mark.parametrize("field", NUMERIC)
def test_the_cli_exits_2_naming_the_variable(base_env, field, capsys):
    from rtk_archiver import cli

    var = var_of(field)
    base_env.setenv(var, "inf")
    assert cli.main(["archive"]) == cli.EXIT_USAGE
    out = capsys.readouterr()
    assert var in out.err and "Traceback" not in out.err + out.out


def test_the_installed_cli_exits_2_without_a_traceback(base_env):
    """The real program, as a user runs it (a subprocess). It used to fail after starting the
    run: 'OverflowError: Python int too large to convert to C int'."""
    import os
    import subprocess
    import sys

    base_env.setenv("ARCHIVE_RETRY_DELAY_SECONDS", "1e30")
    base_env.setenv("ARCHIVE_API_MAX_RETRIES", "0")
    proc = subprocess.run(
        [sys.executable, "-m", "rtk_archiver.cli", "archive"], capture_output=True, text=True, timeout=120, env=os.environ.copy()
    )
    assert proc.returncode == 2, proc.stderr
    assert "ARCHIVE_RETRY_DELAY_SECONDS" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("retries, delay", [(20, 10), (11, 3600), (10, 10)])
def test_the_longest_retry_wait_is_bounded(base_env, retries, delay):
    """ARCHIVE_RETRY_DELAY_SECONDS x 3^(retries-1): 20 retries of 10 s wait 368 years at the end."""
    base_env.setenv("ARCHIVE_TASK_RETRIES", str(retries))
    base_env.setenv("ARCHIVE_RETRY_DELAY_SECONDS", str(delay))
    with pytest.raises(SettingsError, match="ARCHIVE_RETRY_DELAY_SECONDS.*ARCHIVE_TASK_RETRIES"):
        load_settings()


def test_every_accepted_retry_setting_schedules_in_range(base_env):
    from flows.runtime import retry_delays

    for retries in range(0, 21):
        for delay in (0, 0.5, 10, 60, 600, 3600):
            try:
                s = load_settings(ARCHIVE_TASK_RETRIES=retries, ARCHIVE_RETRY_DELAY_SECONDS=delay)
            except SettingsError:
                continue
            longest = max(retry_delays(s))
            assert longest <= MAX_RETRY_WAIT_SECONDS
            datetime.now(timezone.utc) + timedelta(seconds=longest)  # no OverflowError
    assert load_settings().archive_task_retries == 3  # the defaults pass


@pytest.mark.parametrize(
    "var, value",
    [
        ("CLOUDFLARE_BASE_URL", "http://user:hunter2@api.example/client/v4"),
        ("CLOUDFLARE_BASE_URL", "https://hunter2@api.example/client/v4"),
        ("CLOUDFLARE_BASE_URL", "https://:hunter2@api.example/client/v4"),
        ("CLOUDFLARE_BASE_URL", "https://api.example/client/v4?key=hunter2"),
        ("ARCHIVE_S3_ENDPOINT_URL", "http://AKIA:hunter2@minio.example:9000"),
        ("ARCHIVE_DIGITALOCEAN_ENDPOINT_URL", "https://key:hunter2@ams3.digitaloceanspaces.com"),
        ("ARCHIVE_S3_ENDPOINT_URL", "minio.example:9000"),
        ("CLOUDFLARE_BASE_URL", "http://api.example:0/client/v4"),
        ("CLOUDFLARE_BASE_URL", "http://api.example:99999/client/v4"),
    ],
)
def test_url_settings_refuse_credentials_without_echoing_them(base_env, var, value, capsys):
    from rtk_archiver import cli

    base_env.setenv(var, value)
    with pytest.raises(SettingsError, match=var) as info:
        load_settings()
    assert "hunter2" not in str(info.value)
    assert cli.main(["archive"]) == cli.EXIT_USAGE
    out = capsys.readouterr()
    assert var in out.err and "hunter2" not in out.err + out.out


def test_plain_url_settings_still_pass(base_env):
    base_env.setenv("CLOUDFLARE_BASE_URL", "http://127.0.0.1:8787/client/v4/")
    base_env.setenv("ARCHIVE_S3_ENDPOINT_URL", "http://127.0.0.1:9000")
    s = load_settings()
    assert s.cloudflare_base_url == "http://127.0.0.1:8787/client/v4" and s.s3_endpoint_url == "http://127.0.0.1:9000"
