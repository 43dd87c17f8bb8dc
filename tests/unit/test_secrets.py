"""Unit tests for labd.runner.session.split_secrets: which environment variables are withheld from workflows; and
for Channel.emit withholding their values from events where two of them overlap (labd.runner.withhold)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from labd.runner import withhold
from labd.runner.channel import Channel
from labd.runner.session import SECRET_PATTERN, split_secrets
from labd.runner.withhold import MIN_WITHHELD, looked_for, mark, withhold_event
from tests.unit.test_capture_withhold import _reference

WITHHELD = ["OPENAI_API_KEY", "anthropic_api_key", "MY_APIKEY", "GITHUB_TOKEN", "HF_TOKEN", "AWS_SESSION_TOKEN",
            "CLIENT_SECRET", "DB_PASSWORD", "FTP_PASSWD", "GOOGLE_APPLICATION_CREDENTIALS", "SVC_CREDENTIAL",
            # found by an attack review: these reached sessions and the code they ran
            "GH_PAT", "MY_SERVICE_CREDS", "AWS_SESSION_KEY", "STRIPE_KEY",
            # found by the review of the dashboard and MCP server
            "MY_SERVICE_AUTH", "HTTP_AUTHORIZATION", "BASIC_AUTH_HEADER", "API_BEARER",
            # found by the attack review of 2026-12-05
            "DB_PASS", "MYSQL_PWD", "GPG_PASSPHRASE", "SSH_KEY_PASSPHRASE", "PASSPHRASE_FILE_TEXT",
            # found by the attack review of 2026-12-07 (a Sentry DSN holds its key: https://KEY@host/1)
            "SENTRY_DSN", "DATABASE_DSN", "APP_SECRETS", "MY_COOKIE", "SESSION_COOKIES", "COOKIE_JAR"]
KEPT = ["PATH", "HOME", "LANG", "TOKENIZERS_PARALLELISM", "MAX_TOKENS", "CUDA_VISIBLE_DEVICES", "PYTHONPATH",
        "TOKEN_COUNT_LIMIT", "KEYBOARD_LAYOUT", "AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "PWD", "OLDPWD", "PASSES",
        "BYPASS_CACHE", "COMPASS_HOME", "DSNAME", "COOKIECUTTER_CONFIG", "SECRETSTORE_BIN"]


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


# ---- overlapping values in events (Channel.emit) ----------------------------------------------------------------
A, B, C = "AAAAkey1XYZW", "XYZWmore5678", "5678tail9999"  # A's end is B's start, B's end is C's


@pytest.fixture
def channel() -> Iterator[Channel]:
    """A channel never started (emit only encodes and queues the event); the cut guard it arms is disarmed after."""
    ch = Channel("ipc:///nonexistent", b"k" * 32, "s1", spool=None)
    yield ch
    withhold.guard_cuts([])


def emitted(ch: Channel, secrets: dict[str, str], payload: dict[str, Any]) -> Any:
    """The payload of the event as the channel records it, withholding ``secrets``."""
    ch.withhold(secrets)
    ch.emit("output", payload)
    return orjson.loads(ch._pending[-1])[5]  # noqa: SLF001 - the encoded event as it would be spooled and sent


def test_two_overlapping_secrets_in_an_event_leave_no_piece_of_either(channel: Channel) -> None:
    """A = AAAAkey1XYZW and B = XYZWmore5678 printed as AAAAkey1XYZWmore5678: both marks, in the order the values
    begin, and nothing of either (replacing one after the other left "more5678", a piece of B)."""
    got = emitted(channel, {"A_TOKEN": A, "B_TOKEN": B}, {"stream": "stdout", "text": f"x {A}{B[4:]} y"})
    assert got == {"stream": "stdout", "text": "x [secret A_TOKEN withheld][secret B_TOKEN withheld] y"}


def test_a_chain_of_three_overlapping_secrets_in_an_event(channel: Channel) -> None:
    """Three values each overlapping the next, in a field and in a key: one run, three marks; the same values
    apart are each replaced on their own."""
    secrets = {"A_TOKEN": A, "B_TOKEN": B, "C_TOKEN": C}
    chain = f"{A}{B[4:]}{C[4:]}"
    got = emitted(channel, secrets, {"text": f"[{chain}]", chain: f"{A} {B} {C}"})
    marks = "[secret A_TOKEN withheld][secret B_TOKEN withheld][secret C_TOKEN withheld]"
    assert got == {"text": f"[{marks}]",
                   marks: "[secret A_TOKEN withheld] [secret B_TOKEN withheld] [secret C_TOKEN withheld]"}


def test_a_shorter_secret_to_the_left_of_a_longer_one_it_overlaps(channel: Channel) -> None:
    """A shorter value that begins first and overlaps a longer one: both are withheld whole (replacing the longer
    first left the shorter one's start; replacing the leftmost first would leave the longer one's end)."""
    got = emitted(channel, {"SHORT_KEY": "shortKEY1234", "LONG_KEY": "KEY1234-and-a-longer-tail"},
                  {"text": "x shortKEY1234-and-a-longer-tail y"})
    assert got == {"text": "x [secret SHORT_KEY withheld][secret LONG_KEY withheld] y"}


def test_the_json_escape_fallback_withholds_overlapping_secrets_too(channel: Channel) -> None:
    """A value of digits found in a number as well (replacing it there is not JSON): the values are replaced in
    the event's decoded strings instead, overlapping ones as one run there too; the number stays."""
    got = emitted(channel, {"PIN_CODE_TOKEN": "1234567890", "TAIL_TOKEN": "7890abcdefgh"},
                  {"n": 1234567890, "text": "id 1234567890abcdefgh."})
    assert got == {"n": 1234567890, "text": "id [secret PIN_CODE_TOKEN withheld][secret TAIL_TOKEN withheld]."}


def test_a_match_inside_an_escape_sequence_joins_no_run(channel: Channel) -> None:
    """The encoded event holds ``key\\nABCDEFG`` (a newline); the secret ``nABCDEFGHIJ`` matches its bytes from the
    ``n`` on, inside the escape, where the text holds no such value: the real value before it is replaced alone,
    and the text after it stays (it is not merged into a run with the look-alike)."""
    got = emitted(channel, {"G_TOKEN": "key\nABCDEFG", "S_TOKEN": "nABCDEFGHIJ"}, {"text": "key\nABCDEFGHIJ."})
    assert got == {"text": "[secret G_TOKEN withheld]HIJ."}


def test_events_with_overlapping_values_match_the_whole_stream_reference() -> None:
    """withhold_event on an encoded output event, over random texts of values that overlap, over an alphabet of
    JSON escapes (backslash, quote, newline) and the letters that follow a backslash in them: the decoded text is
    what replacing the values in the text gives, overlapping ones as runs (a match that begins inside an escape
    sequence is none), and the event stays valid JSON."""
    import random

    rng = random.Random(31337)
    for _ in range(3000):
        base = "".join(rng.choice('an\\"\n') for _ in range(rng.randint(16, 30)))
        values = []
        for _ in range(rng.randint(1, 4)):
            at = rng.randint(0, len(base) - MIN_WITHHELD)
            values.append(base[at:at + rng.randint(MIN_WITHHELD, min(12, len(base) - at))])
        text = "".join(rng.choice([*values, base[rng.randint(0, 9):], "n", "\\", '"', "\n"])
                       for _ in range(rng.randint(1, 6)))
        secrets = {f"S{i}": v for i, v in enumerate(values)}
        plain = [(v, mark(n)) for n, v in looked_for(secrets)]
        encoded = [(orjson.dumps(v)[1:-1], orjson.dumps(m)[1:-1]) for v, m in plain]
        got = orjson.loads(withhold_event(orjson.dumps(["output", {"text": text}]), encoded, plain))
        assert got == ["output", {"text": _reference(text, secrets)}], (values, text)


def test_the_store_url_is_neither_environment_nor_secret() -> None:
    """``LABD_DB`` is the daemon's alone: in neither the clean environment nor the secrets a runner gets (it was
    shipped among the secrets, and a workflow read it with ``ctx.secret``)."""
    clean, secrets = split_secrets({"LABD_DB": "postgresql://u:pw@h/db", "OPENAI_API_KEY": "sk-1", "PATH": "/bin"})
    assert clean == {"PATH": "/bin"} and secrets == {"OPENAI_API_KEY": "sk-1"}


def test_what_logs_in_to_a_postgresql_store_is_withheld_from_sessions() -> None:
    """With a PostgreSQL store, the libpq settings (``PGPASSWORD``, ``PGPASSFILE`` ...) and any value holding the
    store's password, as its URL writes it or decoded (``DATABASE_URL`` to the same server), are not given to
    sessions; other secrets are. With a SQLite store, a ``PGPASSWORD`` is the user's own secret."""
    from labd.runner.secret_env import store_withheld
    from labd.store.urls import url_passwords as _db_passwords

    passwords = _db_passwords("postgresql+psycopg://labd:s%40cret@db.example:5432/labd")
    assert passwords == {"s%40cret", "s@cret"}
    secrets = {"PGPASSWORD": "pw", "PGPASSFILE": "/x", "DATABASE_URL": "postgres://u:s%40cret@h/db",
               "NOTE": "login s@cret", "OTHER_URL": "postgres://u:other@h/db", "OPENAI_API_KEY": "sk-1"}
    assert store_withheld(secrets, passwords, postgres=True) == {"OTHER_URL": "postgres://u:other@h/db",
                                                                  "OPENAI_API_KEY": "sk-1"}
    assert store_withheld({"PGPASSWORD": "pw"}, set(), postgres=False) == {"PGPASSWORD": "pw"}
    assert _db_passwords("sqlite:////home/u/labd.db") == set()
