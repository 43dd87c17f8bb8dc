"""Unit tests for labd.runner.session.split_secrets: which environment variables are withheld from workflows."""

from __future__ import annotations

import pytest

from labd.runner.session import SECRET_PATTERN, split_secrets

WITHHELD = ["OPENAI_API_KEY", "anthropic_api_key", "MY_APIKEY", "GITHUB_TOKEN", "HF_TOKEN", "AWS_SESSION_TOKEN",
            "CLIENT_SECRET", "DB_PASSWORD", "FTP_PASSWD", "GOOGLE_APPLICATION_CREDENTIALS", "SVC_CREDENTIAL",
            # found by an attack review: these reached sessions and the code they ran
            "GH_PAT", "MY_SERVICE_CREDS", "AWS_SESSION_KEY", "STRIPE_KEY",
            # found by the review of the dashboard and MCP server
            "MY_SERVICE_AUTH", "HTTP_AUTHORIZATION", "BASIC_AUTH_HEADER", "API_BEARER"]
KEPT = ["PATH", "HOME", "LANG", "TOKENIZERS_PARALLELISM", "MAX_TOKENS", "CUDA_VISIBLE_DEVICES", "PYTHONPATH",
        "TOKEN_COUNT_LIMIT", "KEYBOARD_LAYOUT", "AUTHOR_NAME", "GIT_AUTHOR_EMAIL"]


@pytest.mark.parametrize("name", WITHHELD)
def test_credential_looking_names_are_withheld(name: str) -> None:
    """Names ending in API_KEY, _TOKEN, SECRET, PASSWORD, CREDENTIALS... (any case) go to the secrets."""
    clean, secrets = split_secrets({name: "v", "PATH": "/bin"})
    assert secrets == {name: "v"}
    assert clean == {"PATH": "/bin"}


@pytest.mark.parametrize("name", KEPT)
def test_ordinary_names_are_kept(name: str) -> None:
    """Ordinary settings, including ones with TOKEN/KEY in their names, stay in the environment."""
    assert SECRET_PATTERN.search(name) is None
    clean, secrets = split_secrets({name: "v"})
    assert clean == {name: "v"} and secrets == {}


def test_explicit_names_are_withheld_exactly() -> None:
    """Names in the explicit list are withheld even if they do not match the pattern; matching is exact."""
    env = {"WANDB_ENTITY": "me", "DATABASE_URL": "postgres://u@h/db", "DATABASE_URL_RO": "x", "PATH": "/bin"}
    clean, secrets = split_secrets(env, ["DATABASE_URL", "NOT_PRESENT"])
    assert secrets == {"DATABASE_URL": "postgres://u@h/db"}
    assert clean == {"WANDB_ENTITY": "me", "DATABASE_URL_RO": "x", "PATH": "/bin"}


def test_split_is_a_partition_and_does_not_mutate_the_input() -> None:
    """Every variable lands in exactly one of the two dicts; the input dict is unchanged."""
    env = {"A": "1", "X_TOKEN": "t", "B_SECRET": "s", "C": "3"}
    snapshot = dict(env)
    clean, secrets = split_secrets(env, None)
    assert env == snapshot
    assert set(clean) | set(secrets) == set(env) and not set(clean) & set(secrets)
    assert {**clean, **secrets} == env


def test_aws_secret_access_key_is_withheld() -> None:
    """AWS_SECRET_ACCESS_KEY, the most common cloud credential name, is withheld from the workflow."""
    clean, secrets = split_secrets({"AWS_SECRET_ACCESS_KEY": "wJalr...", "AWS_REGION": "eu-west-1"})
    assert "AWS_SECRET_ACCESS_KEY" in secrets
    assert clean == {"AWS_REGION": "eu-west-1"}


@pytest.mark.parametrize("value, withheld", [
    ("postgresql://user:s3cret@db.example/prod", True),
    ("https://:token123@git.example/repo.git", True),
    ("redis://default:pw@localhost:6379/0", True),
    ("postgresql://user@db.example/prod", False),   # no password in it
    ("https://example.org/a:b@c", False),           # ':' and '@' in the path, not credentials
    ("/usr/bin:/bin", False),
    ("https://pypi.org/simple https://u:tok@extra.example/simple", True),  # not only at the start
])
def test_a_url_carrying_a_password_is_withheld_whatever_its_name(value: str, withheld: bool) -> None:
    """`DATABASE_URL=postgres://user:pw@host/db` matches no name pattern but carries a password: withheld by its
    value (found by an attack review: it reached the session and the code its agents ran)."""
    clean, secrets = split_secrets({"SOME_SETTING": value})
    assert (secrets == {"SOME_SETTING": value}) is withheld
    assert (clean == {"SOME_SETTING": value}) is not withheld


def test_proxy_settings_stay_even_with_a_password() -> None:
    """`HTTPS_PROXY=http://user:pw@proxy:3128` (any case, `*_PROXY`) stays in the session's environment: model
    clients behind an authenticating proxy need it to reach their API at all (review of the URL rule)."""
    env = {"HTTPS_PROXY": "http://u:pw@proxy:3128", "http_proxy": "http://u:pw@proxy:3128",
           "ALL_PROXY": "socks5://u:pw@proxy:1080", "NO_PROXY": "localhost"}
    clean, secrets = split_secrets(env)
    assert clean == env and secrets == {}
