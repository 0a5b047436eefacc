"""Configuration: a TOML file plus STEWARD_* variables, validated with errors naming the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.config._settings import ConfigError, Settings, load_settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "steward.toml"
    path.write_text(text)
    return path


def test_defaults_need_no_configuration() -> None:
    settings = load_settings(environ={})
    assert settings == Settings()
    assert settings.resource_url == "http://127.0.0.1:8000/mcp"
    assert settings.tier_names() == ("free", "pro", "enterprise")


def test_toml_file_and_nested_tables_are_read(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        port = 9000
        public_url = "https://mcp.example.com"
        allowed_origins = ["https://app.example.com"]
        [upstream]
        issuer = "https://idp.example.com"
        authorization_endpoint = "https://idp.example.com/authorize"
        token_endpoint = "https://idp.example.com/token"
        client_id = "steward"
        [[tiers]]
        name = "basic"
        requests_per_minute = 10
        [[clients]]
        client_id = "desktop"
        redirect_uris = ["http://127.0.0.1:3000/callback"]
        """,
    )
    settings = load_settings(path, environ={})
    assert settings.port == 9000
    assert settings.resource_url == "https://mcp.example.com/mcp"
    assert settings.upstream is not None
    assert settings.upstream.client_id == "steward"
    assert settings.tier_names() == ("basic",)
    assert settings.tiers[0].requests_per_minute == 10
    assert settings.clients[0].redirect_uris == ("http://127.0.0.1:3000/callback",)


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "port = 9000\n[upstream]\nissuer = 'https://a.example'\n"
        "authorization_endpoint = 'https://a.example/authorize'\n"
        "token_endpoint = 'https://a.example/token'\nclient_id = 'one'\n",
    )
    settings = load_settings(
        path,
        environ={
            "STEWARD_PORT": "9100",
            "STEWARD_UPSTREAM__CLIENT_ID": "two",
            "STEWARD_ALLOWED_ORIGINS": "https://a.example, https://b.example",
            "STEWARD_DEV_IDP": "false",
            "UNRELATED": "x",
        },
    )
    assert settings.port == 9100
    assert settings.upstream is not None and settings.upstream.client_id == "two"
    assert settings.allowed_origins == ("https://a.example", "https://b.example")
    assert settings.dev_idp is False


@pytest.mark.parametrize(
    ("environ", "fragment"),
    [
        (
            {"STEWARD_PORT": "eighty"},
            "setting 'port' (environment variable STEWARD_PORT) must be an integer",
        ),
        ({"STEWARD_PORT": "70000"}, "must be from 0 to 65535"),
        (
            {"STEWARD_WORKERS": "0"},
            "setting 'workers' (environment variable STEWARD_WORKERS) must be from 1",
        ),
        ({"STEWARD_LOG_LEVEL": "loud"}, "must be one of debug, info, warning, error"),
        ({"STEWARD_PUBLIC_URL": "ftp://x"}, "must be an http:// or https:// URL"),
        ({"STEWARD_DEV_IDP": "maybe"}, "must be true or false"),
        ({"STEWARD_COLOUR": "blue"}, "unknown setting 'colour'"),
        (
            {"STEWARD_REFRESH_GRACE": "30"},
            "setting 'refresh_grace': it was removed: a rotated refresh token presented again",
        ),
    ],
)
def test_bad_values_name_the_setting_and_the_expected_form(
    environ: dict[str, str], fragment: str
) -> None:
    with pytest.raises(ConfigError, match=None) as info:
        load_settings(environ=environ)
    assert fragment in str(info.value)


def test_secrets_are_not_echoed_in_errors() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"STEWARD_UPSTREAM__CLIENT_SECRET": "hunter2"})
    # the upstream table is incomplete: the error names what is missing, never the secret
    assert "hunter2" not in str(info.value)
    assert "upstream.issuer" in str(info.value)


def test_missing_and_malformed_files_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", environ={})
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_settings(write(tmp_path, "port = = 1"), environ={})
    with pytest.raises(ConfigError, match=r"setting 'tiers\[0\]' .*must be a table|'tiers\[0\]'"):
        load_settings(write(tmp_path, "tiers = [1]"), environ={})


def test_tier_stream_limits_and_tool_call_quotas_are_validated(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[[tiers]]\nname = "basic"\nmax_streams = 3\ntool_call_quota = "500/hour"\n',
    )
    (tier,) = load_settings(path, environ={}).tiers
    assert (tier.max_streams, tier.tool_call_quota) == (3, "500/hour")
    assert [t.tool_call_quota for t in Settings().tiers] == ["1000/day", "20000/day", "200000/day"]
    for bad in ('"ten/day"', '"5/fortnight"', '"0/day"', '"100"'):
        path = write(tmp_path, f'[[tiers]]\nname = "basic"\ntool_call_quota = {bad}\n')
        with pytest.raises(ConfigError) as err:
            load_settings(path, environ={})
        assert "tiers[0].tool_call_quota" in str(err.value)
        assert "N/second, N/minute, N/hour or N/day" in str(err.value)
    path = write(tmp_path, '[[tiers]]\nname = "basic"\nmax_streams = 0\n')
    with pytest.raises(ConfigError, match=r"tiers\[0\]\.max_streams' must be at least 1"):
        load_settings(path, environ={})


UPSTREAM_ENV = {
    "STEWARD_UPSTREAM__ISSUER": "https://idp.example.com",
    "STEWARD_UPSTREAM__AUTHORIZATION_ENDPOINT": "https://idp.example.com/authorize",
    "STEWARD_UPSTREAM__TOKEN_ENDPOINT": "https://idp.example.com/token",
    "STEWARD_UPSTREAM__CLIENT_ID": "steward",
}


@pytest.mark.parametrize(
    "environ",
    [
        {"STEWARD_HOST": "0.0.0.0"},
        {"STEWARD_HOST": "::"},
        {"STEWARD_HOST": "192.168.1.10"},
        {"STEWARD_PUBLIC_URL": "https://mcp.example.com"},
        {"STEWARD_PUBLIC_URL": "http://10.0.0.7:8000"},
    ],
)
def test_the_development_idp_is_refused_off_loopback(environ: dict[str, str]) -> None:
    """It signs anyone in as any user: without an upstream IdP, a node that is not on loopback
    only does not start, and the error says what to do."""
    with pytest.raises(ConfigError) as info:
        load_settings(environ=environ)
    assert "development IdP" in str(info.value)
    assert "[upstream]" in str(info.value)
    assert "dev_idp_allow_public_insecure" in str(info.value)
    # with the identity provider configured, or the development IdP off, the same host is fine
    assert not load_settings(environ={**environ, **UPSTREAM_ENV}).dev_idp_exposed
    assert load_settings(environ={**environ, "STEWARD_DEV_IDP": "false"}).dev_idp is False


def test_the_development_idp_off_loopback_takes_the_loudly_named_setting() -> None:
    for host, public_url in (
        ("127.0.0.1", None),
        ("::1", "http://[::1]:8000"),
        ("localhost", "http://localhost:8000"),
    ):
        settings = load_settings(environ={}, overrides={"host": host, "public_url": public_url})
        assert not settings.dev_idp_exposed
    settings = load_settings(
        environ={"STEWARD_HOST": "0.0.0.0", "STEWARD_DEV_IDP_ALLOW_PUBLIC_INSECURE": "true"}
    )
    assert settings.dev_idp_exposed and settings.dev_idp_allow_public_insecure


def test_configured_clients_redirect_uris_follow_the_registration_rules(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [[clients]]
        client_id = "desktop"
        redirect_uris = ["http://127.0.0.1/callback", "https://app.example/cb#x"]
        """,
    )
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    assert "setting 'clients[0].redirect_uris[1]'" in str(info.value)
    assert "without control characters, spaces or a fragment" in str(info.value)


def test_the_upstream_refresh_settings_are_bounded_and_reach_the_session_policy() -> None:
    from server._node import session_policy_of

    settings = load_settings(
        environ={
            "STEWARD_UPSTREAM_REFRESH_LEAD": "30",
            "STEWARD_UPSTREAM_REFRESH_LEAD_FRACTION": "0.1",
            "STEWARD_UPSTREAM_REFRESH_FLOOR": "2",
            "STEWARD_UPSTREAM_REFRESH_BACKOFF_MAX": "60",
        }
    )
    policy = session_policy_of(settings)
    assert (policy.refresh_lead, policy.refresh_lead_fraction) == (30.0, 0.1)
    assert (policy.refresh_floor, policy.refresh_backoff_max) == (2.0, 60.0)
    for env, expected in (
        ({"STEWARD_UPSTREAM_REFRESH_LEAD_FRACTION": "0.9"}, "from 0.01 to 0.5, got '0.9'"),
        ({"STEWARD_UPSTREAM_REFRESH_FLOOR": "0"}, "at least 1.0, got '0'"),
        ({"STEWARD_UPSTREAM_REFRESH_LEAD": "-1"}, "at least 0.0, got '-1'"),
        (
            {"STEWARD_UPSTREAM_REFRESH_FLOOR": "30", "STEWARD_UPSTREAM_REFRESH_BACKOFF_MAX": "10"},
            "'upstream_refresh_backoff_max' must be at least upstream_refresh_floor (30.0), got 10.0",
        ),
    ):
        with pytest.raises(ConfigError) as refused:
            load_settings(environ=env)
        assert expected in str(refused.value), refused.value


def test_the_stream_fast_path_is_on_by_default_and_the_environment_turns_it_off() -> None:
    assert load_settings(environ={}).stream_fast_path is True
    assert load_settings(environ={"STEWARD_STREAM_FAST_PATH": "false"}).stream_fast_path is False
    with pytest.raises(ConfigError, match="stream_fast_path"):
        load_settings(environ={"STEWARD_STREAM_FAST_PATH": "sometimes"})


def test_an_upstream_without_discovery_needs_a_way_to_learn_who_signed_in(
    tmp_path: Path,
) -> None:
    """With discovery off, an id_token needs the provider's keys (jwks_uri) and userinfo needs
    its endpoint: with neither, no sign-in could ever name its user, so the start is refused."""
    base = (
        "[upstream]\nissuer = 'https://a.example'\nclient_id = 'one'\ndiscovery = false\n"
        "authorization_endpoint = 'https://a.example/authorize'\n"
        "token_endpoint = 'https://a.example/token'\n"
    )
    with pytest.raises(ConfigError, match="could not learn who signed in"):
        load_settings(write(tmp_path, base), environ={})
    for extra in (
        "jwks_uri = 'https://a.example/jwks'\n",
        "userinfo_endpoint = 'https://a.example/me'\n",
    ):
        settings = load_settings(write(tmp_path, base + extra), environ={})
        assert settings.upstream is not None and settings.upstream.discovery is False
