"""The SDK's local half: config resolution, error translation, spec building, backoff."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import grpc
import pytest

from cortex import errors
from cortex.sdk import (
    Client,
    ClientConfig,
    ConfigError,
    TaskState,
    build_spec,
    parse_duration,
    parse_env,
    parse_labels,
    parse_node_state,
    parse_task_state,
)
from cortex.sdk._backoff import Backoff
from cortex.sdk._config import HUB_SERVER_NAME, NO_HUB
from cortex.sdk._errors import translate

# Not secrets, and not named like them: bandit's S105/S106 flag literal "token" values.
CRED = "t"
FLAG_CRED = "flag-token"
HIDDEN_CRED = "s3cret"
FILE_CRED = "file-token"
PEM = b"-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n"
OTHER_PEM = b"-----BEGIN CERTIFICATE-----\nMIIBother\n-----END CERTIFICATE-----\n"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Every test starts with no CORTEX_* variables and an empty CORTEX_HOME."""
    for name in ("CORTEX_HUB", "CORTEX_TOKEN", "CORTEX_CA"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("CORTEX_HOME", str(home))
    return home


def write_hub_file(home: Path, *, address: str = "127.0.0.1:7443", token: str = FILE_CRED,
                   relative: bool = False) -> None:
    """client.json as the hub writes it, with its token and CA files."""
    (home / "hub").mkdir(exist_ok=True)
    (home / "hub" / "admin.token").write_text(token + "\n")
    (home / "hub" / "ca.pem").write_bytes(PEM)
    prefix = "hub" if relative else str(home / "hub")
    body = {"address": address, "token_file": f"{prefix}/admin.token",
            "ca_file": f"{prefix}/ca.pem", "node_address": "127.0.0.1:7444"}
    (home / "client.json").write_text(json.dumps(body))


# --- resolution: flags > env > file ------------------------------------------------------

def test_nothing_configured_says_how_to_start_a_hub() -> None:
    """With no flags, env or client.json the error names `cortex up` and CORTEX_HUB/TOKEN."""
    with pytest.raises(ConfigError) as info:
        ClientConfig.from_env()
    assert str(info.value) == NO_HUB
    assert "cortex up" in NO_HUB
    assert "CORTEX_HUB and CORTEX_TOKEN" in NO_HUB
    assert isinstance(info.value, errors.CortexError)


def test_client_file_supplies_address_token_and_ca(clean_env: Path) -> None:
    """The hub's client.json alone is enough: address, token text and CA PEM."""
    write_hub_file(clean_env)
    config = ClientConfig.from_env()
    assert (config.address, config.token, config.ca_pem) == ("127.0.0.1:7443", FILE_CRED, PEM)
    assert not config.insecure


def test_relative_paths_in_client_file_resolve_against_its_directory(clean_env: Path) -> None:
    """token_file/ca_file relative to client.json still work (the hub writes absolute ones)."""
    write_hub_file(clean_env, relative=True)
    assert ClientConfig.from_env().token == FILE_CRED


def test_env_beats_file(monkeypatch: pytest.MonkeyPatch, clean_env: Path, tmp_path: Path) -> None:
    """CORTEX_HUB, CORTEX_TOKEN and CORTEX_CA override every value of client.json."""
    write_hub_file(clean_env)
    (tmp_path / "other.pem").write_bytes(OTHER_PEM)
    monkeypatch.setenv("CORTEX_HUB", "hub.example:9000")
    monkeypatch.setenv("CORTEX_TOKEN", "env-token")
    monkeypatch.setenv("CORTEX_CA", str(tmp_path / "other.pem"))
    config = ClientConfig.from_env()
    assert (config.address, config.token, config.ca_pem) == (
        "hub.example:9000", "env-token", OTHER_PEM)


def test_flags_beat_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Explicit arguments (the CLI's flags) override the environment."""
    (tmp_path / "flag.pem").write_bytes(OTHER_PEM)
    monkeypatch.setenv("CORTEX_HUB", "env.example:1")
    monkeypatch.setenv("CORTEX_TOKEN", "env-token")
    monkeypatch.setenv("CORTEX_CA", str(tmp_path / "missing.pem"))
    config = ClientConfig.from_env(address="flag.example:2", token=FLAG_CRED,
                                   ca_file=tmp_path / "flag.pem")
    assert (config.address, config.token, config.ca_pem) == (
        "flag.example:2", "flag-token", OTHER_PEM)


def test_env_token_with_file_address(monkeypatch: pytest.MonkeyPatch, clean_env: Path) -> None:
    """Each field resolves on its own: CORTEX_TOKEN plus the file's address and CA."""
    write_hub_file(clean_env)
    monkeypatch.setenv("CORTEX_TOKEN", "env-token")
    config = ClientConfig.from_env()
    assert (config.address, config.token, config.ca_pem) == ("127.0.0.1:7443", "env-token", PEM)


def test_local_secrets_never_go_to_another_hub(
    monkeypatch: pytest.MonkeyPatch, clean_env: Path
) -> None:
    """CORTEX_HUB naming another hub does not borrow the local admin token."""
    write_hub_file(clean_env)
    monkeypatch.setenv("CORTEX_HUB", "elsewhere.example:7443")
    with pytest.raises(ConfigError, match=r"elsewhere\.example:7443 \(from CORTEX_HUB\) has no "
                                          r"token: set CORTEX_TOKEN or pass --token"):
        ClientConfig.from_env()


def test_env_hub_equal_to_file_address_uses_file_secrets(
    monkeypatch: pytest.MonkeyPatch, clean_env: Path
) -> None:
    """CORTEX_HUB naming the local hub still gets its token and CA from client.json."""
    write_hub_file(clean_env)
    monkeypatch.setenv("CORTEX_HUB", "127.0.0.1:7443")
    config = ClientConfig.from_env()
    assert (config.token, config.ca_pem) == (FILE_CRED, PEM)


def test_home_argument_beats_cortex_home(tmp_path: Path) -> None:
    """`home=` (the --home flag) is searched instead of $CORTEX_HOME."""
    other = tmp_path / "other-home"
    other.mkdir()
    write_hub_file(other, address="127.0.0.1:1234")
    assert ClientConfig.from_env(other).address == "127.0.0.1:1234"


def test_insecure_skips_every_ca(monkeypatch: pytest.MonkeyPatch, clean_env: Path,
                                 tmp_path: Path) -> None:
    """insecure=True takes no CA from env or file (it must be asked for explicitly)."""
    write_hub_file(clean_env)
    (tmp_path / "env.pem").write_bytes(PEM)
    monkeypatch.setenv("CORTEX_CA", str(tmp_path / "env.pem"))
    config = ClientConfig.from_env(insecure=True)
    assert config.insecure
    assert config.ca_pem is None


# --- resolution errors name the file and the fix -------------------------------------------

def test_broken_client_file_names_the_file(clean_env: Path) -> None:
    """A client.json that is not JSON is reported with its path and what to do."""
    (clean_env / "client.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"client\.json is not a valid client config: not "
                                          r"JSON .*restart the hub"):
        ClientConfig.from_env()


def test_client_file_without_address_is_rejected(clean_env: Path) -> None:
    """client.json must carry an "address" string."""
    (clean_env / "client.json").write_text(json.dumps({"token_file": "x"}))
    with pytest.raises(ConfigError, match='no "address" string'):
        ClientConfig.from_env()


def test_missing_token_file_says_what_to_do(clean_env: Path) -> None:
    """A token_file that is gone names the file and suggests a restart or CORTEX_TOKEN."""
    write_hub_file(clean_env)
    (clean_env / "hub" / "admin.token").unlink()
    with pytest.raises(ConfigError, match=r"cannot read the token file .*admin\.token.*"
                                          r"restart the hub .*CORTEX_TOKEN"):
        ClientConfig.from_env()


def test_unreadable_ca_names_its_source(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """CORTEX_CA pointing nowhere fails at startup, naming the variable."""
    monkeypatch.setenv("CORTEX_HUB", "hub.example:1")
    monkeypatch.setenv("CORTEX_TOKEN", "t")
    monkeypatch.setenv("CORTEX_CA", str(tmp_path / "nope.pem"))
    with pytest.raises(ConfigError, match=r"cannot read the CA file .*nope\.pem \(from "
                                          r"CORTEX_CA\)"):
        ClientConfig.from_env()


def test_ca_file_must_hold_a_pem_certificate(tmp_path: Path) -> None:
    """A CA file without a PEM certificate is refused before any connection."""
    (tmp_path / "ca.pem").write_text("hello")
    with pytest.raises(ConfigError, match="holds no PEM certificate"):
        ClientConfig.from_env(address="h:1", token=CRED, ca_file=tmp_path / "ca.pem")


# --- the value itself ---------------------------------------------------------------------

@pytest.mark.parametrize("address", ["", "localhost", "host:", ":7443", "host:http",
                                     "host:0", "host:70000", "[]:1"])
def test_address_must_be_host_port(address: str) -> None:
    """Addresses without a host and a TCP port are refused with an example."""
    with pytest.raises(ConfigError, match="is not HOST:PORT"):
        ClientConfig(address=address, token=CRED)


@pytest.mark.parametrize("address", ["127.0.0.1:7443", "hub.example:1", "[::1]:7443"])
def test_valid_addresses(address: str) -> None:
    """IPv4, names and bracketed IPv6 are accepted."""
    assert ClientConfig(address=address, token=CRED).address == address


@pytest.mark.parametrize("token", ["", "two words", "line\n"])
def test_token_must_be_one_word(token: str) -> None:
    """An empty token or one with whitespace (invalid in metadata) is refused early."""
    with pytest.raises(ConfigError, match="token is empty or contains whitespace"):
        ClientConfig(address="h:1", token=token)


def test_token_and_ca_stay_out_of_repr() -> None:
    """repr() (logs, tracebacks) never shows the token."""
    text = repr(ClientConfig(address="h:1", token=HIDDEN_CRED, ca_pem=PEM))
    assert HIDDEN_CRED not in text
    assert "h:1" in text


def test_insecure_with_a_ca_is_contradictory() -> None:
    """insecure=True and a CA cannot both be meant."""
    with pytest.raises(ConfigError, match="exclude each other"):
        ClientConfig(address="h:1", token=CRED, ca_pem=PEM, insecure=True)


@pytest.mark.parametrize("size", [0, 1023, 2**31])
def test_message_size_is_bounded(size: int) -> None:
    """max_message_bytes must fit gRPC's int32 and be useful."""
    with pytest.raises(ConfigError, match="max_message_bytes"):
        ClientConfig(address="h:1", token=CRED, max_message_bytes=size)


def test_default_message_size_is_16_mib() -> None:
    """The default beats gRPC's 4 MiB trap."""
    assert ClientConfig(address="h:1", token=CRED).max_message_bytes == 16 * 1024 * 1024


def test_tls_name_is_the_hubs_with_its_ca() -> None:
    """With the hub's CA, TLS verifies the name the hub's certificate always carries."""
    assert ClientConfig(address="10.0.0.1:1", token=CRED, ca_pem=PEM).tls_server_name == \
        HUB_SERVER_NAME
    assert ClientConfig(address="h:1", token=CRED).tls_server_name is None
    assert ClientConfig(address="h:1", token=CRED, ca_pem=PEM,
                        server_name="hub.internal").tls_server_name == "hub.internal"


def test_client_constructs_without_a_loop_and_rejects_mixed_arguments() -> None:
    """Client(config) is cheap (channel opens on first use); config plus overrides is refused."""
    config = ClientConfig(address="127.0.0.1:1", token=CRED, insecure=True)
    client = Client(config)
    assert client.config is config
    asyncio.run(client.close())
    with pytest.raises(errors.InvalidArgument, match="not both"):
        Client(config, token=CRED)


def test_submit_refuses_a_spec_and_options_together() -> None:
    """submit(spec, argv=...) is ambiguous and rejected before any network call."""
    client = Client(ClientConfig(address="127.0.0.1:1", token=CRED, insecure=True))

    async def submit() -> None:
        async with client:
            await client.submit(build_spec(argv=["true"]), argv=["false"])

    with pytest.raises(errors.InvalidArgument, match="not both"):
        asyncio.run(submit())


# --- grpc errors become CortexErrors in one place ------------------------------------------

@pytest.mark.parametrize(("code", "expected"), [
    (grpc.StatusCode.INVALID_ARGUMENT, errors.InvalidArgument),
    (grpc.StatusCode.OUT_OF_RANGE, errors.InvalidArgument),
    (grpc.StatusCode.NOT_FOUND, errors.NotFound),
    (grpc.StatusCode.UNAUTHENTICATED, errors.PermissionDenied),
    (grpc.StatusCode.PERMISSION_DENIED, errors.PermissionDenied),
    (grpc.StatusCode.FAILED_PRECONDITION, errors.Conflict),
    (grpc.StatusCode.ALREADY_EXISTS, errors.Conflict),
    (grpc.StatusCode.ABORTED, errors.Conflict),
    (grpc.StatusCode.UNAVAILABLE, errors.Unavailable),
    (grpc.StatusCode.DEADLINE_EXCEEDED, errors.Unavailable),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, errors.Unavailable),
    (grpc.StatusCode.INTERNAL, errors.RemoteError),
    (grpc.StatusCode.UNKNOWN, errors.RemoteError),
])
def test_status_codes_map_onto_the_error_tree(code: grpc.StatusCode,
                                              expected: type[errors.CortexError]) -> None:
    """Each gRPC status becomes its documented CortexError subclass (exactly that class)."""
    error = translate(_rpc_error(code, "the details"))
    assert type(error) is expected
    assert "the details" in str(error)


def test_translated_message_is_the_servers_details() -> None:
    """A server-side refusal reads exactly as the hub wrote it."""
    error = translate(_rpc_error(grpc.StatusCode.NOT_FOUND, "no task 't-1'"), address="h:1")
    assert str(error) == "no task 't-1'"


def test_transport_failures_name_the_hub() -> None:
    """Unavailable says which hub could not be reached; unclassified errors keep their code."""
    down = translate(_rpc_error(grpc.StatusCode.UNAVAILABLE, "connection refused"),
                     address="h:1")
    assert str(down) == "hub h:1: connection refused"
    odd = translate(_rpc_error(grpc.StatusCode.INTERNAL, ""))
    assert str(odd) == "internal (INTERNAL)"


def _rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details, None)


# --- labels, env, durations, states ---------------------------------------------------------

def test_labels_from_strings_or_a_mapping() -> None:
    """Labels parse from ["k=v", ...], a single "k=v", or a dict; values may contain '='."""
    assert parse_labels(["os=linux", "gpu=a100"]) == {"os": "linux", "gpu": "a100"}
    assert parse_labels("expr=a=b") == {"expr": "a=b"}
    assert parse_labels({"zone": "eu"}) == {"zone": "eu"}
    assert parse_labels(None) == {}


@pytest.mark.parametrize("item", ["bad", "=v", "k="])
def test_malformed_label_is_explained(item: str) -> None:
    """A label without KEY=VALUE says so and shows an example."""
    with pytest.raises(errors.InvalidArgument, match=r"is not KEY=VALUE \(e\.g\. os=linux\)"):
        parse_labels([item])


def test_label_keys_follow_the_hubs_rules() -> None:
    """Label keys are checked locally with the hub's own rules."""
    with pytest.raises(errors.InvalidArgument, match="key 'no spaces'"):
        parse_labels(["no spaces=1"])


def test_env_allows_empty_values_but_needs_equals() -> None:
    """`K=` sets an empty variable; `K` alone is an error."""
    assert parse_env(["A=", "B=x=y"]) == {"A": "", "B": "x=y"}
    with pytest.raises(errors.InvalidArgument, match="environment variable 'A'"):
        parse_env(["A"])


@pytest.mark.parametrize(("text", "seconds"), [
    ("90", 90.0), ("90s", 90.0), ("15m", 900.0), ("1h", 3600.0), ("2d", 172800.0),
    ("1.5m", 90.0), ("500ms", 0.5), (" 2h ", 7200.0), (45, 45.0), (2.5, 2.5),
])
def test_durations(text: str | float, seconds: float) -> None:
    """Durations accept plain seconds and s/m/h/d suffixes."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "-5", "5x", "1h30m", "h", "nan", "inf"])
def test_bad_durations_show_examples(text: str) -> None:
    """Anything else is an InvalidArgument listing valid forms."""
    with pytest.raises(errors.InvalidArgument, match=r"e\.g\. 90, 90s, 15m, 1h, 2d"):
        parse_duration(text)


def test_states_parse_from_names_or_numbers() -> None:
    """Task and node states accept any case, '-' for '_', or their protocol numbers."""
    assert parse_task_state("timed_out") == TaskState.TIMED_OUT
    assert parse_task_state("TIMED-OUT") == TaskState.TIMED_OUT
    assert parse_task_state(4) == TaskState.SUCCEEDED
    assert parse_node_state("online") == 1
    with pytest.raises(errors.InvalidArgument, match="not one of: queued, assigned"):
        parse_task_state("done")
    with pytest.raises(errors.InvalidArgument, match="not one of"):
        parse_task_state(0)


# --- task specs ---------------------------------------------------------------------------

def test_shell_spec_from_argv() -> None:
    """argv, env, labels, timeout and retries land in their TaskSpec fields."""
    spec = build_spec(argv=["make", "test"], env=["CI=1"], labels={"os": "linux"},
                      timeout="15m", max_attempts=3, retry_on_failure=True, priority=5)
    assert list(spec.shell.argv) == ["make", "test"]
    assert dict(spec.shell.env) == {"CI": "1"}
    assert dict(spec.labels) == {"os": "linux"}
    assert spec.timeout_s == 900.0
    assert (spec.retry.max_attempts, spec.retry.retry_on_failure) == (3, True)
    assert (spec.skill, spec.priority) == ("shell", 5)


def test_shell_spec_from_a_command_string() -> None:
    """command= runs through the shell; argv stays empty."""
    spec = build_spec(command="ls | wc -l")
    assert spec.shell.command == "ls | wc -l"
    assert not spec.shell.argv


@pytest.mark.parametrize("options", [{}, {"argv": []}, {"argv": ["ls"], "command": "ls"}])
def test_exactly_one_of_argv_or_command(options: dict[str, object]) -> None:
    """Neither or both of argv/command is refused with the rule spelled out."""
    with pytest.raises(errors.InvalidArgument, match="exactly one of argv"):
        build_spec(**options)  # type: ignore[arg-type]


def test_argv_given_as_a_string_points_to_command() -> None:
    """argv="ls -l" (a common slip) suggests command=."""
    with pytest.raises(errors.InvalidArgument, match="pass a shell string as command="):
        build_spec(argv="ls -l")


def test_shell_options_are_refused_for_other_skills() -> None:
    """argv/command only make sense for the shell skill."""
    with pytest.raises(errors.InvalidArgument, match="only for the shell skill, not 'noop'"):
        build_spec(skill="noop", argv=["ls"])
    assert build_spec(skill="noop").skill == "noop"


def test_every_problem_is_reported_at_once() -> None:
    """Several mistakes produce one error listing all of them."""
    with pytest.raises(errors.InvalidArgument) as info:
        build_spec(argv=["ls"], max_attempts=0, max_output_bytes=-1, priority=10**6)
    message = str(info.value)
    assert "max_attempts must be at least 1" in message
    assert "max_output_bytes must be >= 0" in message
    assert "priority" in message


# --- reconnect backoff ----------------------------------------------------------------------

def test_backoff_is_jittered_capped_and_bounded_in_total() -> None:
    """Delays stay within [0, cap], and none is offered once the budget is spent."""
    backoff = Backoff(budget=10.0, base=0.1, cap=2.0, rng=random.Random(7))  # noqa: S311 - seeded jitter, not crypto
    now = 100.0
    delays = []
    while (delay := backoff.next_delay(now)) is not None:
        assert 0.0 <= delay <= 2.0
        delays.append(delay)
        now += delay + 0.5
    assert now - 100.0 >= 10.0
    assert len(delays) > 3


def test_backoff_reset_restores_the_budget() -> None:
    """After a sign of health the whole budget is available again."""
    backoff = Backoff(budget=1.0, rng=random.Random(1))  # noqa: S311 - seeded jitter, not crypto
    assert backoff.next_delay(0.0) is not None
    assert backoff.next_delay(5.0) is None
    backoff.reset()
    assert backoff.next_delay(5.0) is not None


# --- public surface -------------------------------------------------------------------------

def test_public_surface_is_pinned() -> None:
    """cortex.sdk exports exactly this list; changing it is a deliberate, reviewed act."""
    import cortex
    import cortex.sdk

    assert sorted(cortex.sdk.__all__) == sorted([
        "TERMINAL_STATES", "Attachment", "Client", "ClientConfig", "ConfigError",
        "ConfigOverrides", "Conflict", "CortexError", "File", "InvalidArgument", "JoinToken",
        "Node", "NodeLoad", "NodeState", "NotFound", "OutputCallback", "OutputStream",
        "PermissionDenied", "RemoteError", "Result", "SyncAttachment", "SyncClient", "Task",
        "TaskEvent", "TaskOptions", "TaskSpec", "TaskState", "Unavailable", "build_spec",
        "parse_duration", "parse_env", "parse_labels", "parse_node_state", "parse_task_state",
        # tenancy (AdminService)
        "Admin", "ApiToken", "NewApiToken", "Pool", "Quota", "QuotaExceeded", "SyncAdmin",
        "Tenant",
        # the browser skill
        "BrowserError", "BrowserSession", "SyncBrowserSession", "list_browser_sessions",
        "artifacts_of",
    ])
    assert all(hasattr(cortex.sdk, name) for name in cortex.sdk.__all__)
    assert all(hasattr(cortex, name) for name in cortex.__all__)
    assert cortex.Client is cortex.sdk.Client
    assert cortex.__version__ == "0.1.0"
