"""agi_xmpp.conf and xmpp.conf: defaults, every key, the Asterisk dialect, file:line errors."""

from __future__ import annotations

import ipaddress
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agi_xmpp.config import (
    default_resource,
    AccountConfig,
    AmiConfig,
    BindAddress,
    Config,
    DirectoryEntry,
    GeneralConfig,
    check_jid,
    load_config,
    make_directory_entry,
    parse_bind,
    parse_directory_value,
    parse_xmpp_conf,
    render_accounts,
)
from agi_xmpp.config import _AMI_KEYS, _CLIENT_KEYS, _GENERAL_KEYS, _OUR_ACCOUNT_KEYS
from agi_xmpp.errors import ConfigError, DirectoryError, UnknownAccount

ACCOUNT = """\
[asterisk]
username = asterisk@example.com
secret = s3cret-pw
"""


def write(directory: Path, text: str, name: str = "agi_xmpp.conf") -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def load(tmp_path: Path, text: str) -> Config:
    return load_config(write(tmp_path, text))


def error_of(tmp_path: Path, text: str) -> ConfigError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value


def assert_error(err: ConfigError, path: Path, line: int, *words: str) -> None:
    assert err.path == str(path), str(err)
    assert err.line == line, str(err)
    assert str(err).startswith(f"{path}:{line}: ")
    for word in words:
        assert word in err.reason, err.reason


# ---------------------------------------------------------------------------- defaults


def test_general_defaults_are_the_documented_ones(tmp_path: Path) -> None:
    """A file that sets only state_dir gets every documented default and no accounts."""
    config = load(tmp_path, "[general]\nstate_dir = /tmp/state\n")
    g = config.general
    assert g.agi_bind == BindAddress("127.0.0.1", 4573)
    assert g.agi_allow == (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
    assert g.http_bind == BindAddress("127.0.0.1", 4580)
    assert g.http_token is None
    assert g.state_dir == "/tmp/state"
    assert g.database == "sqlite:////tmp/state/agi-xmpp.sqlite3"
    assert (g.log_format, g.log_level) == ("console", "info")
    assert g.default_account is None
    assert (g.max_receive_timeout, g.outbox_ttl, g.max_message_bytes) == (3600, 3600, 65536)
    assert g.xmpp_conf is None
    assert config.accounts == {} and config.ami is None and config.directory == ()
    assert config.warnings == ()


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    """An empty (or comment-only) file is valid and equals the defaults."""
    config = load(tmp_path, "; nothing here\n\n")
    assert config.general == GeneralConfig()
    assert config.general.database == "sqlite:////var/lib/agi-xmpp/agi-xmpp.sqlite3"
    assert config.path == str(tmp_path / "agi_xmpp.conf")


def test_account_defaults_match_res_xmpp(tmp_path: Path) -> None:
    """An account with only username and secret gets res_xmpp's defaults plus ours."""
    account = load(tmp_path, ACCOUNT).accounts["asterisk"]
    assert account == AccountConfig(
        name="asterisk", username="asterisk@example.com", secret="s3cret-pw"
    )
    assert account.serverhost is None
    assert (account.port, account.priority, account.timeout) == (5222, 1, 5)
    assert (account.status, account.statusmessage) == ("available", "Online and Available")
    assert account.usetls and account.usesasl and account.keepalive and account.autoregister
    assert not account.autoprune and not account.forceoldssl
    assert account.auth_policy == "accept"
    assert account.tls_verify and account.cafile is None
    assert account.buddies == ()
    assert account.resource == default_resource() and default_resource().startswith("asterisk-")


def test_missing_file_is_reported(tmp_path: Path) -> None:
    """A configuration file that does not exist is a ConfigError naming it."""
    path = tmp_path / "nope.conf"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.path == str(path) and "not found" in info.value.reason


def test_directory_instead_of_file_is_reported(tmp_path: Path) -> None:
    """Pointing at a directory is a ConfigError, not a crash."""
    with pytest.raises(ConfigError, match="directory"):
        load_config(tmp_path)


# ---------------------------------------------------------------------------- [general]


def test_every_general_key(tmp_path: Path) -> None:
    """Every [general] key is read and converted."""
    config = load(
        tmp_path,
        """\
        [general]
        agi_bind = 0.0.0.0:14573
        agi_allow = 127.0.0.1, 10.1.0.0/16 , ::1
        http_bind = 192.0.2.10:8080
        http_token = tok-123
        database = postgresql://agi:pw@db.example.com/agi
        state_dir = /srv/agi
        log_format = JSON
        log_level = Debug
        default_account = Asterisk
        max_receive_timeout = 600
        outbox_ttl = 7200
        max_message_bytes = 1024

        [asterisk]
        username = asterisk@example.com
        secret = pw
        """,
    )
    g = config.general
    assert g.agi_bind == BindAddress("0.0.0.0", 14573)
    assert g.agi_allow == tuple(
        ipaddress.ip_network(n) for n in ("127.0.0.1/32", "10.1.0.0/16", "::1/128")
    )
    assert g.http_bind == BindAddress("192.0.2.10", 8080)
    assert g.http_token == "tok-123"
    assert g.database == "postgresql://agi:pw@db.example.com/agi"
    assert g.state_dir == "/srv/agi"
    assert (g.log_format, g.log_level) == ("json", "debug")
    assert g.default_account == "asterisk"
    assert (g.max_receive_timeout, g.outbox_ttl, g.max_message_bytes) == (600, 7200, 1024)


def test_state_dir_moves_the_default_database(tmp_path: Path) -> None:
    """Without database=, SQLite lives in state_dir; a relative state_dir is taken from the file."""
    g = load(tmp_path, "[general]\nstate_dir = state\n").general
    assert g.state_dir == str(tmp_path / "state")
    assert g.database == f"sqlite:///{tmp_path}/state/agi-xmpp.sqlite3"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:4573", BindAddress("127.0.0.1", 4573)),
        ("[::1]:4573", BindAddress("::1", 4573)),
        ("[::]", BindAddress("::", 4573)),
        ("::1", BindAddress("::1", 4573)),
        ("localhost", BindAddress("localhost", 4573)),
        ("pbx.example.com:5000", BindAddress("pbx.example.com", 5000)),
        ("127.0.0.1:0", BindAddress("127.0.0.1", 0)),
    ],
)
def test_bind_address_forms(text: str, expected: BindAddress) -> None:
    """host, host:port, [v6], [v6]:port and bare IPv6 all parse; the port defaults."""
    assert parse_bind(text, 4573) == expected


@pytest.mark.parametrize(
    "text", ["1.2.3.4:99999", "[::1", "[::1]x", "host:abc", ":4573", "[zz]:1", "a b", "host:"]
)
def test_bad_bind_address_is_refused(text: str) -> None:
    """Malformed listening addresses raise ValueError."""
    with pytest.raises(ValueError):
        parse_bind(text, 4573)


def test_bind_address_renders_with_brackets() -> None:
    """str() of an IPv6 bind brackets the host so the port stays readable."""
    assert str(BindAddress("::1", 4573)) == "[::1]:4573"
    assert str(BindAddress("127.0.0.1", 4573)) == "127.0.0.1:4573"
    host, port = BindAddress("::1", 1)
    assert (host, port) == ("::1", 1)


def test_bad_agi_bind_names_file_and_line(tmp_path: Path) -> None:
    """A bad agi_bind port is reported with file and line."""
    err = error_of(tmp_path, "[general]\n\nagi_bind = 127.0.0.1:70000\n")
    assert_error(err, tmp_path / "agi_xmpp.conf", 3, "agi_bind", "65535")


def test_bad_agi_allow_entry(tmp_path: Path) -> None:
    """An agi_allow item that is no address or network is an error on its line."""
    err = error_of(tmp_path, "[general]\nagi_allow = 127.0.0.1, lan\n")
    assert_error(err, tmp_path / "agi_xmpp.conf", 2, "lan")


def test_empty_agi_allow_is_refused(tmp_path: Path) -> None:
    """agi_allow with nothing in it would lock every client out: error."""
    err = error_of(tmp_path, "[general]\nagi_allow = ,\n")
    assert_error(err, tmp_path / "agi_xmpp.conf", 2, "agi_allow")


def test_http_on_non_loopback_needs_token(tmp_path: Path) -> None:
    """Binding HTTP beyond loopback without http_token refuses to start, naming the line."""
    err = error_of(tmp_path, "[general]\nlog_level = info\nhttp_bind = 0.0.0.0:4580\n")
    assert_error(err, tmp_path / "agi_xmpp.conf", 3, "http_token")


def test_http_on_non_loopback_with_token_is_fine(tmp_path: Path) -> None:
    """With a token, a public http_bind is accepted, and the token stays out of repr."""
    g = load(
        tmp_path, "[general]\nhttp_bind = [2001:db8::1]:4580\nhttp_token = very-secret-token\n"
    ).general
    assert g.http_bind == BindAddress("2001:db8::1", 4580)
    assert "very-secret-token" not in repr(g)


@pytest.mark.parametrize("host", ["127.0.0.2", "::1", "localhost", "[::1]"])
def test_loopback_http_needs_no_token(tmp_path: Path, host: str) -> None:
    """Any loopback address (IPv4, IPv6, localhost) needs no token."""
    assert load(tmp_path, f"[general]\nhttp_bind = {host}\n").general.http_token is None


def test_database_url_is_checked_and_hidden(tmp_path: Path) -> None:
    """database must look like a URL; its (password-bearing) value is not in repr."""
    g = load(tmp_path, "[general]\ndatabase = mysql+pymysql://u:hunter2@db/agi\n").general
    assert "hunter2" not in repr(g)
    err = error_of(tmp_path, "[general]\ndatabase = /var/lib/x.db\n")
    assert_error(err, tmp_path / "agi_xmpp.conf", 2, "SQLAlchemy URL")


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("log_format = xml", ("log_format", "console, json")),
        ("log_level = loud", ("log_level",)),
        ("max_receive_timeout = 0", ("max_receive_timeout", "1 to")),
        ("outbox_ttl = 1h", ("outbox_ttl",)),
        ("max_message_bytes = 1_000", ("max_message_bytes",)),
        ("agi_bind =", ("needs a value",)),
    ],
)
def test_bad_general_values(tmp_path: Path, line: str, words: tuple[str, ...]) -> None:
    """Bad [general] values are errors on their own line."""
    err = error_of(tmp_path, f"[general]\n{line}\n")
    assert_error(err, tmp_path / "agi_xmpp.conf", 2, *words)


def test_default_account_must_exist(tmp_path: Path) -> None:
    """default_account naming no account is an error at its line."""
    err = error_of(tmp_path, "[general]\ndefault_account = nobody\n\n" + ACCOUNT)
    assert_error(err, tmp_path / "agi_xmpp.conf", 2, "nobody")


def test_unknown_general_key_suggests_the_right_one(tmp_path: Path) -> None:
    """A misspelt key is an error that names it and suggests the close match."""
    err = error_of(tmp_path, "[general]\nagi_bnd = 127.0.0.1\n")
    assert_error(err, tmp_path / "agi_xmpp.conf", 2, "agi_bnd", "agi_bind")


# ---------------------------------------------------------------------------- accounts


def test_every_account_key(tmp_path: Path) -> None:
    """Every account key is read and converted."""
    ca = write(tmp_path, "dummy", "certs/ca.pem")
    account = load(
        tmp_path,
        """\
        [PBX]
        type = client
        username = pbx@example.com
        secret = pw
        serverhost = xmpp.example.com
        port = 5223
        priority = -5
        status = dnd
        statusmessage = "In a meeting"
        usetls = no
        usesasl = yes
        forceoldssl = yes
        buddy = alice@example.com
        autoregister = no
        autoprune = yes
        auth_policy = deny
        timeout = 30
        keepalive = off
        tls_verify = false
        cafile = certs/ca.pem
        resource = switchboard
        """,
    ).accounts["pbx"]
    assert account == AccountConfig(
        name="pbx",
        username="pbx@example.com",
        secret="pw",
        serverhost="xmpp.example.com",
        port=5223,
        priority=-5,
        status="dnd",
        statusmessage="In a meeting",
        usetls=False,
        usesasl=True,
        forceoldssl=True,
        buddies=("alice@example.com",),
        autoregister=False,
        autoprune=True,
        auth_policy="deny",
        timeout=30,
        keepalive=False,
        tls_verify=False,
        cafile=str(ca),
        resource="switchboard",
    )


@pytest.mark.parametrize(
    ("word", "value"),
    [("yes", True), ("YES", True), ("true", True), ("on", True), ("1", True), ("y", True),
     ("no", False), ("False", False), ("off", False), ("0", False), ("n", False)],
)  # fmt: skip
def test_asterisk_booleans(tmp_path: Path, word: str, value: bool) -> None:
    """Booleans take Asterisk's spellings (ast_true/ast_false), any case."""
    account = load(tmp_path, ACCOUNT + f"keepalive = {word}\n").accounts["asterisk"]
    assert account.keepalive is value


def test_bad_boolean_names_file_and_line(tmp_path: Path) -> None:
    """A word that is neither yes nor no is an error at its line."""
    err = error_of(tmp_path, ACCOUNT + "usetls = maybe\n")
    assert_error(err, tmp_path / "agi_xmpp.conf", 4, "usetls", "yes or no", "maybe")


@pytest.mark.parametrize(
    ("line", "key"),
    [("port = 0", "port"), ("port = 65536", "port"), ("port = x", "port"),
     ("priority = 128", "priority"), ("priority = -129", "priority"), ("timeout = -1", "timeout")],
)  # fmt: skip
def test_out_of_range_numbers(tmp_path: Path, line: str, key: str) -> None:
    """Ports, priorities and timeouts outside their ranges are errors at their line."""
    err = error_of(tmp_path, ACCOUNT + line + "\n")
    assert_error(err, tmp_path / "agi_xmpp.conf", 4, key)


@pytest.mark.parametrize(
    ("word", "status"),
    [("chat", "chat"), ("chatty", "chat"), ("available", "available"), ("online", "available"),
     ("away", "away"), ("xa", "xa"), ("xaway", "xa"), ("DND", "dnd")],
)  # fmt: skip
def test_status_spellings_of_res_xmpp(tmp_path: Path, word: str, status: str) -> None:
    """status accepts every spelling res_xmpp does and stores the XMPP <show> word."""
    assert load(tmp_path, ACCOUNT + f"status = {word}\n").accounts["asterisk"].status == status


def test_invisible_status_becomes_dnd_with_warning(tmp_path: Path) -> None:
    """status=invisible becomes dnd (res_xmpp's fallback) and is warned about."""
    config = load(tmp_path, ACCOUNT + "status = invisible\n")
    assert config.accounts["asterisk"].status == "dnd"
    assert any("invisible" in w for w in config.warnings)


def test_bad_status_is_refused(tmp_path: Path) -> None:
    """An unknown status word is an error listing the choices."""
    err = error_of(tmp_path, ACCOUNT + "status = busy\n")
    assert_error(err, tmp_path / "agi_xmpp.conf", 4, "status", "chat", "dnd")


def test_bad_auth_policy_is_refused(tmp_path: Path) -> None:
    """auth_policy is accept or deny."""
    err = error_of(tmp_path, ACCOUNT + "auth_policy = maybe\n")
    assert_error(err, tmp_path / "agi_xmpp.conf", 4, "accept, deny")


def test_buddies_repeat_and_split_on_commas(tmp_path: Path) -> None:
    """buddy lines accumulate, may hold comma lists, and duplicates collapse case-insensitively."""
    account = load(
        tmp_path,
        ACCOUNT
        + "buddy = a@example.com\nbuddy => B@Example.com, c@example.com,\nbuddy = A@EXAMPLE.COM\n",
    ).accounts["asterisk"]
    assert account.buddies == ("a@example.com", "b@example.com", "c@example.com")


def test_bad_buddy_names_its_line(tmp_path: Path) -> None:
    """A buddy that is not a bare JID is an error at its line."""
    err = error_of(tmp_path, ACCOUNT + "buddy = a@example.com\nbuddy = bob\n")
    assert_error(err, tmp_path / "agi_xmpp.conf", 5, "buddy", "bob")
    err = error_of(tmp_path, ACCOUNT + "buddy = bob@example.com/phone\n")
    assert_error(err, tmp_path / "agi_xmpp.conf", 4, "bare JID")


@pytest.mark.parametrize(
    "username", ["asterisk", "a@b@c", "@example.com", "me@", "me @example.com", "me@example.com/"]
)
def test_bad_username_is_refused(tmp_path: Path, username: str) -> None:
    """username must be a JID; the error names its line."""
    err = error_of(tmp_path, f"[asterisk]\nsecret = x\nusername = {username}\n")
    assert_error(err, tmp_path / "agi_xmpp.conf", 3, "username")


def test_username_and_secret_are_required(tmp_path: Path) -> None:
    """An account without username or secret is an error naming the section."""
    err = error_of(tmp_path, "[general]\n\n[asterisk]\nusername = a@example.com\n")
    assert_error(err, tmp_path / "agi_xmpp.conf", 3, "[asterisk]", "secret")
    err = error_of(tmp_path, "[asterisk]\nsecret = x\nusername =\n")
    assert_error(err, tmp_path / "agi_xmpp.conf", 3, "username")


def test_resource_comes_from_username(tmp_path: Path) -> None:
    """Without resource=, the username's resource is used, else 'asterisk'."""
    config = load(
        tmp_path,
        "[a]\nusername = a@example.com/desk\nsecret = x\n"
        "[b]\nusername = b@example.com\nsecret = x\n",
    )
    assert config.accounts["a"].resource == "desk"
    assert config.accounts["a"].bare_jid == "a@example.com"
    assert config.accounts["b"].resource == default_resource()


def test_contradicting_resource_is_refused(tmp_path: Path) -> None:
    """resource= that differs from the username's resource is an error; the same one is fine."""
    err = error_of(tmp_path, "[a]\nusername = a@example.com/desk\nsecret = x\nresource = phone\n")
    assert_error(err, tmp_path / "agi_xmpp.conf", 4, "resource")
    ok = load(tmp_path, "[a]\nusername = a@example.com/desk\nsecret = x\nresource = desk\n")
    assert ok.accounts["a"].resource == "desk"


def test_missing_cafile_is_refused(tmp_path: Path) -> None:
    """cafile must exist (resolved against the config file's directory)."""
    err = error_of(tmp_path, ACCOUNT + "cafile = missing.pem\n")
    assert_error(err, tmp_path / "agi_xmpp.conf", 4, "cafile", str(tmp_path / "missing.pem"))


def test_empty_serverhost_means_dns_srv(tmp_path: Path) -> None:
    """serverhost = (empty) is the same as leaving it out: None, DNS SRV."""
    assert load(tmp_path, ACCOUNT + "serverhost =\n").accounts["asterisk"].serverhost is None


def test_unknown_account_key_is_an_error(tmp_path: Path) -> None:
    """A key neither res_xmpp nor agi-xmpp knows is an error with file:line and a hint."""
    err = error_of(tmp_path, ACCOUNT + "prot = 5222\n")
    assert_error(err, tmp_path / "agi_xmpp.conf", 4, "'prot'", "[asterisk]", "port")


def test_res_xmpp_only_keys_are_accepted_with_warnings(tmp_path: Path) -> None:
    """res_xmpp keys agi-xmpp ignores load; those that would change anything are warned about."""
    config = load(
        tmp_path,
        ACCOUNT
        + "debug = yes\nsendtodialplan = no\ncontext = default\ndistribute_events = yes\n"
        + "pubsub_node = pubsub.example.com\nusesasl = no\n",
    )
    warned = " ".join(config.warnings)
    for key in ("debug", "distribute_events", "pubsub_node", "usesasl"):
        assert key in warned
    for key in ("sendtodialplan", "'context'"):
        assert key not in warned
    assert config.warnings[0].startswith(f"{tmp_path / 'agi_xmpp.conf'}:4: ")


def test_oauth_without_secret_is_refused(tmp_path: Path) -> None:
    """refresh_token (Google OAuth) is not supported: an account relying on it fails to load."""
    err = error_of(tmp_path, "[g]\nusername = me@gmail.com\nrefresh_token = abc\n")
    assert_error(err, tmp_path / "agi_xmpp.conf", 1, "OAuth")


def test_component_section_is_skipped_with_warning(tmp_path: Path) -> None:
    """type=component sections are not accounts; a warning says so."""
    config = load(tmp_path, ACCOUNT + "\n[comp]\ntype = component\nusername = comp.example.com\n")
    assert list(config.accounts) == ["asterisk"]
    assert any("[comp]" in w and "component" in w for w in config.warnings)


def test_bad_type_is_refused(tmp_path: Path) -> None:
    """type is client or component."""
    err = error_of(tmp_path, ACCOUNT + "type = server\n")
    assert_error(err, tmp_path / "agi_xmpp.conf", 4, "type")


def test_account_name_must_work_as_an_agi_argument(tmp_path: Path) -> None:
    """A section name with spaces or commas cannot be an ACCOUNT argument: error."""
    err = error_of(tmp_path, "[my account]\nusername = a@example.com\nsecret = x\n")
    assert_error(err, tmp_path / "agi_xmpp.conf", 1, "ACCOUNT")


def test_secrets_never_appear_in_repr(tmp_path: Path) -> None:
    """Passwords stay out of repr() of accounts, AMI settings and the whole Config."""
    config = load(tmp_path, ACCOUNT + "\n[ami]\nusername = agi\nsecret = ami-pass-42\n")
    assert "s3cret-pw" not in repr(config.accounts["asterisk"])
    assert "ami-pass-42" not in repr(config.ami)
    assert "s3cret-pw" not in repr(config) and "ami-pass-42" not in repr(config)
    assert config.accounts["asterisk"].secret == "s3cret-pw"


# ---------------------------------------------------------------------------- account lookup


def test_account_lookup_is_case_insensitive(tmp_path: Path) -> None:
    """Section names are lower-cased; account() matches any case and ignores surrounding spaces."""
    config = load(tmp_path, "[Office]\nusername = o@example.com\nsecret = x\n" + ACCOUNT)
    assert set(config.accounts) == {"office", "asterisk"}
    assert config.account("OFFICE").name == "office"
    assert config.account(" Asterisk ").name == "asterisk"


def test_empty_account_uses_default_account(tmp_path: Path) -> None:
    """An empty ACCOUNT means default_account."""
    config = load(
        tmp_path,
        "[general]\ndefault_account = office\n[office]\nusername = o@example.com\nsecret = x\n"
        + ACCOUNT,
    )
    assert config.account("").name == "office"


def test_empty_account_with_a_single_account(tmp_path: Path) -> None:
    """With exactly one account and no default_account, an empty ACCOUNT means that one."""
    assert load(tmp_path, ACCOUNT).account("").name == "asterisk"


def test_empty_account_without_default_is_unknown(tmp_path: Path) -> None:
    """Two accounts, no default_account: an empty ACCOUNT raises UnknownAccount."""
    config = load(tmp_path, "[office]\nusername = o@example.com\nsecret = x\n" + ACCOUNT)
    with pytest.raises(UnknownAccount, match="default_account"):
        config.account("")


def test_unknown_account_raises(tmp_path: Path) -> None:
    """An unconfigured name raises UnknownAccount with a one-line reason."""
    with pytest.raises(UnknownAccount) as info:
        load(tmp_path, ACCOUNT).account("x")
    assert str(info.value) == "unknown account 'x'"


def test_config_normalises_hand_built_accounts() -> None:
    """A Config built by hand (tests, fakes) gets lower-cased, read-only accounts too."""
    account = AccountConfig(name="a", username="a@example.com", secret="x")
    config = Config(None, GeneralConfig(), {"A": account})
    assert config.account("a") is account
    with pytest.raises(TypeError):
        config.accounts["b"] = account  # type: ignore[index]


# ---------------------------------------------------------------------------- [ami]


def test_ami_defaults(tmp_path: Path) -> None:
    """[ami] with only credentials gets the documented defaults."""
    ami = load(tmp_path, "[ami]\nusername = agi\nsecret = pw\n").ami
    assert ami == AmiConfig(username="agi", secret="pw")
    assert (ami.host, ami.port, ami.originate_context) == ("127.0.0.1", 5038, "from-internal")
    assert not ami.presence_to_hints and not ami.voicemail_upload
    assert ami.voicemail_spool == "/var/spool/asterisk/voicemail"


def test_every_ami_key(tmp_path: Path) -> None:
    """Every [ami] key is read."""
    ami = load(
        tmp_path,
        """\
        [ami]
        host = pbx.example.com
        port = 5039
        username = agi
        secret = pw
        originate_context = internal
        presence_to_hints = yes
        voicemail_spool = /srv/vm
        voicemail_upload = yes
        """,
    ).ami
    assert ami == AmiConfig(
        host="pbx.example.com", port=5039, username="agi", secret="pw",
        originate_context="internal", presence_to_hints=True, voicemail_spool="/srv/vm",
        voicemail_upload=True,
    )  # fmt: skip


def test_ami_needs_credentials(tmp_path: Path) -> None:
    """[ami] without a secret is an error naming the section."""
    err = error_of(tmp_path, "[ami]\nusername = agi\n")
    assert_error(err, tmp_path / "agi_xmpp.conf", 1, "[ami]", "secret")


def test_no_ami_section_means_none(tmp_path: Path) -> None:
    """Without [ami] the AMI features are off (ami is None)."""
    assert load(tmp_path, ACCOUNT).ami is None


# ---------------------------------------------------------------------------- [directory]


def test_directory_entries(tmp_path: Path) -> None:
    """Directory lines give extension, JID, device (default PJSIP/EXT) and mailbox."""
    directory = load(
        tmp_path,
        """\
        [directory]
        100 = Alice@Example.com
        101 => bob@example.com, device=SIP/101, mailbox=101@sales
        *42 = carol@example.com,mailbox=42
        """,
    ).directory
    assert directory == (
        DirectoryEntry("100", "alice@example.com", "PJSIP/100", None),
        DirectoryEntry("101", "bob@example.com", "SIP/101", "101@sales"),
        DirectoryEntry("*42", "carol@example.com", "PJSIP/*42", "42@default"),
    )


def test_duplicate_extension_names_both_lines(tmp_path: Path) -> None:
    """The same extension twice is an error at the second line that points to the first."""
    err = error_of(
        tmp_path, "[directory]\n100 = a@example.com\n101 = b@example.com\n100 = c@example.com\n"
    )
    path = tmp_path / "agi_xmpp.conf"
    assert_error(err, path, 4, "100", f"{path}:2")


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("100 = alice", ("alice",)),
        ("100 = alice@example.com/phone", ("bare JID",)),
        ("100 = a@example.com, device=PJSIP", ("device",)),
        ("100 = a@example.com, device=PJSIP/1&PJSIP/2", ("device",)),
        ("100 = a@example.com, mailbox=1 2", ("mailbox",)),
        ("100 = a@example.com, ring=yes", ("ring",)),
        ("100 = a@example.com, device=SIP/1, device=SIP/2", ("twice",)),
        ("1 00 = a@example.com", ("extension",)),
        ("10!0 = a@example.com", ("extension",)),
    ],
)
def test_bad_directory_entries(tmp_path: Path, line: str, words: tuple[str, ...]) -> None:
    """Malformed directory lines are errors at their line."""
    err = error_of(tmp_path, f"[directory]\n{line}\n")
    assert_error(err, tmp_path / "agi_xmpp.conf", 2, *words)


def test_directory_helpers_raise_directory_error() -> None:
    """The helpers the CLI and HTTP API share raise DirectoryError, not ConfigError."""
    assert make_directory_entry("200", "Dave@Example.com") == DirectoryEntry(
        "200", "dave@example.com", "PJSIP/200"
    )
    assert parse_directory_value("7", "e@example.com, mailbox=7@default").mailbox == "7@default"
    with pytest.raises(DirectoryError):
        make_directory_entry("", "a@example.com")
    with pytest.raises(DirectoryError):
        parse_directory_value("7", "not-a-jid")


@pytest.mark.parametrize(
    "text", ["user@example.com", "user@example.com/res", "user@example.com/a/b@c"]
)
def test_check_jid_accepts(text: str) -> None:
    """check_jid accepts bare and full JIDs (the resource may hold / and @)."""
    assert check_jid(text) == text


@pytest.mark.parametrize("text", ["example.com", "a@b@c", "user@exa mple.com", "user@"])
def test_check_jid_refuses(text: str) -> None:
    """check_jid refuses what RFC 7622 refuses, and domain-only JIDs where a user is meant."""
    with pytest.raises(ValueError):
        check_jid(text)


def test_check_jid_bare_normalises() -> None:
    """A bare JID comes back in RFC 7622 normal form (case-folded local part and domain)."""
    assert check_jid(" Alice@Example.COM ", bare=True) == "alice@example.com"


# ---------------------------------------------------------------------------- the dialect


def test_arrow_and_equals_are_the_same(tmp_path: Path) -> None:
    """'key => value' and 'key = value' mean the same thing; whitespace around them is dropped."""
    a = load(tmp_path, "[general]\n  log_level=>debug  \n").general
    b = load(tmp_path, "[general]\nlog_level   =   debug\n").general
    assert a.log_level == b.log_level == "debug"


def test_comments_and_escaped_semicolons(tmp_path: Path) -> None:
    """';' starts a comment; '\\;' is a literal semicolon kept in the value."""
    account = load(
        tmp_path,
        ACCOUNT + "statusmessage = Lunch\\; back at 2 ; this is a comment\n; port = 1\n",
    ).accounts["asterisk"]
    assert account.statusmessage == "Lunch; back at 2"
    assert account.port == 5222


def test_secret_with_escaped_semicolon(tmp_path: Path) -> None:
    """A password containing ';' is written '\\;' and read back exactly."""
    config = load(tmp_path, "[a]\nusername = a@example.com\nsecret = pa\\;ss\\\\word\n")
    assert config.accounts["a"].secret == "pa;ss\\\\word"


def test_block_comments(tmp_path: Path) -> None:
    """';-- ... --;' comments span lines and nest, as in Asterisk."""
    config = load(
        tmp_path,
        """\
        [general]
        ;-- the whole block is ignored
        log_level = bogus
          ;-- nested --;
        agi_bind = nonsense:x
        --;
        log_level = debug ;-- inline --; ; trailing
        """,
    )
    assert config.general.log_level == "debug"
    assert config.general.agi_bind == BindAddress("127.0.0.1", 4573)


def test_dashes_comment_is_an_ordinary_comment(tmp_path: Path) -> None:
    """';---' (three dashes) is a plain comment line, not a block start."""
    assert (
        load(tmp_path, ";------------\n[general]\nlog_level = error\n").general.log_level == "error"
    )


def test_unclosed_block_comment_names_its_start(tmp_path: Path) -> None:
    """A ';--' never closed is an error at the line where it opened."""
    err = error_of(tmp_path, "[general]\nlog_level = info\n;-- start\nlog_level = debug\n")
    assert_error(err, tmp_path / "agi_xmpp.conf", 3, ";--")


def test_keys_are_case_insensitive(tmp_path: Path) -> None:
    """Key names match in any case, as res_xmpp's strcasecmp does; reserved sections too."""
    config = load(
        tmp_path,
        "[GENERAL]\nLog_Level = warning\n[Asterisk]\nUserName = a@example.com\nSECRET = x\n",
    )
    assert config.general.log_level == "warning"
    assert config.accounts["asterisk"].username == "a@example.com"


def test_duplicate_key_names_both_lines(tmp_path: Path) -> None:
    """A single-valued key set twice in one section is an error pointing to the first."""
    err = error_of(tmp_path, ACCOUNT + "port = 5222\nport = 5223\n")
    path = tmp_path / "agi_xmpp.conf"
    assert_error(err, path, 5, "port", "twice", f"{path}:4")


def test_plus_equals_appends(tmp_path: Path) -> None:
    """'key += more' appends to the key's earlier value, as Asterisk does."""
    config = load(tmp_path, "[general]\nagi_allow = 127.0.0.1\nagi_allow += ,10.0.0.0/8\n")
    assert config.general.agi_allow == (
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("10.0.0.0/8"),
    )


def test_duplicate_section_is_an_error(tmp_path: Path) -> None:
    """A second [name] header is an error pointing to the first and suggesting (+)."""
    err = error_of(tmp_path, ACCOUNT + "\n[Asterisk]\nport = 5223\n")
    path = tmp_path / "agi_xmpp.conf"
    assert_error(err, path, 5, "twice", f"{path}:1", "(+)")


def test_plus_section_adds_to_an_earlier_one(tmp_path: Path) -> None:
    """[name](+) adds keys to a section defined above."""
    config = load(tmp_path, ACCOUNT + "[general]\n[asterisk](+)\nport = 5300\n")
    assert config.accounts["asterisk"].port == 5300


def test_plus_section_without_original_is_an_error(tmp_path: Path) -> None:
    """[name](+) for a section not defined above is an error at its header."""
    err = error_of(tmp_path, "[general]\n[asterisk](+)\nport = 5300\n")
    assert_error(err, tmp_path / "agi_xmpp.conf", 2, "(+)")


def test_templates_and_inheritance(tmp_path: Path) -> None:
    """[t](!) is a template (no account); [a](t) inherits its keys and may override them."""
    config = load(
        tmp_path,
        """\
        [company](!)
        serverhost = xmpp.example.com
        port = 5269
        buddy = boss@example.com
        statusmessage = Company phone

        [tls-off](!)
        tls_verify = no

        [sales](company,tls-off)
        username = sales@example.com
        secret = x
        port = 5222
        buddy = sales-lead@example.com

        [support](company)
        username = support@example.com
        secret = y
        """,
    )
    assert set(config.accounts) == {"sales", "support"}
    sales, support = config.accounts["sales"], config.accounts["support"]
    assert (sales.serverhost, sales.port, sales.tls_verify) == ("xmpp.example.com", 5222, False)
    assert sales.buddies == ("boss@example.com", "sales-lead@example.com")
    assert (support.port, support.tls_verify, support.statusmessage) == (
        5269,
        True,
        "Company phone",
    )


def test_template_errors_point_into_the_template(tmp_path: Path) -> None:
    """A bad value inherited from a template is reported at the template's line."""
    err = error_of(
        tmp_path, "[t](!)\nport = many\n\n[a](t)\nusername = a@example.com\nsecret = x\n"
    )
    assert_error(err, tmp_path / "agi_xmpp.conf", 2, "port")


def test_inheriting_from_an_unknown_section_is_an_error(tmp_path: Path) -> None:
    """[a](missing) is an error at the header."""
    err = error_of(tmp_path, "[a](missing)\nusername = a@example.com\nsecret = x\n")
    assert_error(err, tmp_path / "agi_xmpp.conf", 1, "missing")


@pytest.mark.parametrize("header", ["[general", "[general] (!", "[general](+x)", "[]"])
def test_malformed_headers(tmp_path: Path, header: str) -> None:
    """Broken section headers are errors at their line."""
    err = error_of(tmp_path, f"; top\n{header}\n")
    assert_error(err, tmp_path / "agi_xmpp.conf", 2)


def test_line_without_equals_is_an_error(tmp_path: Path) -> None:
    """A line that is no header, directive or key = value is an error at its line (pyst2 checks)."""
    err = error_of(tmp_path, "[general]\nlog_level = info\njust words\n")
    assert_error(err, tmp_path / "agi_xmpp.conf", 3, "key = value")


def test_line_outside_any_section_is_an_error(tmp_path: Path) -> None:
    """A key before the first [section] is an error, not silently dropped (pyst2 drops it)."""
    err = error_of(tmp_path, "; header\nlog_level = debug\n[general]\n")
    assert_error(err, tmp_path / "agi_xmpp.conf", 2, "section")


def test_crlf_bom_and_tabs(tmp_path: Path) -> None:
    """Windows line ends, a UTF-8 BOM and tab indentation are all fine."""
    path = tmp_path / "agi_xmpp.conf"
    path.write_bytes(b"\xef\xbb\xbf[general]\r\n\tlog_level\t=\tdebug\r\n")
    assert load_config(path).general.log_level == "debug"


def test_invalid_utf8_names_its_line(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 are an error at their line."""
    path = tmp_path / "agi_xmpp.conf"
    path.write_bytes(b"[general]\nlog_level = \xff\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert_error(info.value, path, 2, "UTF-8")


def test_unicode_values_are_kept(tmp_path: Path) -> None:
    """Non-ASCII text (a status message) survives."""
    config = load(tmp_path, ACCOUNT + "statusmessage = Réunion — ne pas déranger\n")
    assert config.accounts["asterisk"].statusmessage == "Réunion — ne pas déranger"


# ---------------------------------------------------------------------------- #include


def test_include_and_tryinclude(tmp_path: Path) -> None:
    """#include reads a file relative to the including one; #tryinclude may miss its file."""
    write(
        tmp_path, "[asterisk]\nusername = a@example.com\nsecret = x\n", "agi_xmpp.d/accounts.conf"
    )
    config = load(
        tmp_path,
        "[general]\nlog_level = debug\n"
        '#include "agi_xmpp.d/accounts.conf"\n#tryinclude <absent.conf>\n',
    )
    assert config.general.log_level == "debug"
    assert list(config.accounts) == ["asterisk"]


def test_include_glob(tmp_path: Path) -> None:
    """#include with a wildcard reads every match in name order."""
    write(tmp_path, "[b]\nusername = b@example.com\nsecret = x\n", "conf.d/20-b.conf")
    write(tmp_path, "[a]\nusername = a@example.com\nsecret = x\n", "conf.d/10-a.conf")
    assert list(load(tmp_path, "#include conf.d/*.conf\n").accounts) == ["a", "b"]


def test_missing_include_is_an_error_at_the_directive(tmp_path: Path) -> None:
    """#include of a file that does not exist is an error at the #include line."""
    err = error_of(tmp_path, "[general]\n#include missing.conf\n")
    assert_error(err, tmp_path / "agi_xmpp.conf", 2, "missing.conf")


def test_errors_inside_an_included_file_name_that_file(tmp_path: Path) -> None:
    """A bad value in an included file is reported with the included file's path and line."""
    inner = write(
        tmp_path,
        "; inner\n[asterisk]\nusername = a@example.com\nsecret = x\nport = nope\n",
        "inner.conf",
    )
    err = error_of(tmp_path, "[general]\n#include inner.conf\n")
    assert_error(err, inner, 5, "port")


def test_include_continues_the_current_section(tmp_path: Path) -> None:
    """Included lines join the current section, and the includer then goes on in its own."""
    write(
        tmp_path,
        "secret = from-include\n[other]\nusername = o@example.com\nsecret = y\n",
        "part.conf",
    )
    config = load(
        tmp_path, "[asterisk]\nusername = a@example.com\n#include part.conf\nport = 5299\n"
    )
    assert config.accounts["asterisk"].secret == "from-include"
    assert config.accounts["asterisk"].port == 5299
    assert config.accounts["other"].port == 5222


def test_lines_after_a_top_level_include_need_a_section(tmp_path: Path) -> None:
    """An #include before any header does not lend its last section to the lines after it."""
    write(tmp_path, "[asterisk]\nusername = a@example.com\nsecret = x\n", "accounts.conf")
    err = error_of(tmp_path, "#include accounts.conf\nport = 5299\n")
    assert_error(err, tmp_path / "agi_xmpp.conf", 2, "section")


def test_include_loop_is_an_error(tmp_path: Path) -> None:
    """A file that includes itself (directly or not) is an error, not a hang."""
    write(tmp_path, "#include agi_xmpp.conf\n", "loop.conf")
    err = error_of(tmp_path, "[general]\n#include loop.conf\n")
    assert_error(err, tmp_path / "loop.conf", 1, "loop")


@pytest.mark.parametrize(
    ("line", "words"),
    [("#exec /bin/true", ("#exec",)), ("#define x", ("directive",)), ("#include", ("file name",))],
)
def test_other_directives_are_refused(tmp_path: Path, line: str, words: tuple[str, ...]) -> None:
    """#exec, unknown directives and an #include without a file are errors at their line."""
    err = error_of(tmp_path, f"[general]\n{line}\n")
    assert_error(err, tmp_path / "agi_xmpp.conf", 2, *words)


# ---------------------------------------------------------------------------- xmpp.conf

XMPP_CONF = """\
; xmpp.conf as a res_xmpp installation has it
[general]
debug=no                               ; Enable debugging (disabled by default).
autoprune=yes                          ; Auto remove users from buddy list.
;autoregister=yes
auth_policy=deny                       ; Deny subscription requests

[asterisk]
type=client                            ; Client or Component connection
serverhost=talk.example.net            ; Route to server
pubsub_node=pubsub.example.net         ; Node to use for publishing events via PubSub
username=asterisk@example.net/asterisk ; Username with optional resource.
secret=blah;with comment
priority=1
port=5222
usetls=yes
usesasl=yes
buddy=mogorman@example.net
buddy=jane@example.net
status=xaway                           ; One of: chat, available, away, xaway, or dnd
statusmessage="I am available"
timeout=5
sendtodialplan=yes
context=messages
forceoldssl=no
keepalive=yes

[office]
username=office@example.net
secret=other
autoprune=no
auth_policy=accept

[gateway]
type=component
serverhost=example.net
username=gateway.example.net
secret=comp
"""


def test_parse_realistic_xmpp_conf(tmp_path: Path) -> None:
    """A res_xmpp xmpp.conf yields client accounts; its [general] gives their defaults."""
    warnings: list[str] = []
    accounts = parse_xmpp_conf(write(tmp_path, XMPP_CONF, "xmpp.conf"), warnings)
    assert list(accounts) == ["asterisk", "office"]
    a = accounts["asterisk"]
    assert a.username == "asterisk@example.net/asterisk" and a.resource == "asterisk"
    assert a.secret == "blah"
    assert a.serverhost == "talk.example.net"
    assert a.status == "xa" and a.statusmessage == "I am available"
    assert a.buddies == ("mogorman@example.net", "jane@example.net")
    assert a.autoprune is True and a.auth_policy == "deny"  # from [general]
    assert a.autoregister is True  # res_xmpp's default
    o = accounts["office"]
    assert o.autoprune is False and o.auth_policy == "accept"  # the client's own setting wins
    assert o.serverhost is None
    joined = "\n".join(warnings)
    assert "pubsub_node" in joined and "sendtodialplan" in joined and "'context'" in joined
    assert "[gateway]" in joined and "component" in joined


def test_xmpp_conf_is_strict_about_unknown_keys(tmp_path: Path) -> None:
    """Keys res_xmpp does not know (including agi-xmpp's own) are errors in xmpp.conf."""
    path = write(
        tmp_path, "[asterisk]\nusername=a@example.net\nsecret=x\ntls_verify=no\n", "xmpp.conf"
    )
    with pytest.raises(ConfigError) as info:
        parse_xmpp_conf(path)
    assert_error(info.value, path, 4, "tls_verify")


def test_xmpp_conf_bad_general_value(tmp_path: Path) -> None:
    """A bad value in xmpp.conf's [general] is reported there."""
    path = write(tmp_path, "[general]\nautoprune=sometimes\n", "xmpp.conf")
    with pytest.raises(ConfigError) as info:
        parse_xmpp_conf(path)
    assert_error(info.value, path, 2, "autoprune")


def test_xmpp_conf_accounts_join_ours(tmp_path: Path) -> None:
    """xmpp_conf= adds that file's clients to the accounts (relative path: next to our file)."""
    write(tmp_path, XMPP_CONF, "asterisk/xmpp.conf")
    config = load(
        tmp_path,
        "[general]\nxmpp_conf = asterisk/xmpp.conf\ndefault_account = office\n\n"
        "[pbx]\nusername = pbx@example.com\nsecret = x\n",
    )
    assert list(config.accounts) == ["pbx", "asterisk", "office"]
    assert config.general.xmpp_conf == str(tmp_path / "asterisk" / "xmpp.conf")
    assert config.account("").name == "office"
    assert any("pubsub_node" in w for w in config.warnings)


def test_xmpp_conf_name_clash_is_an_error(tmp_path: Path) -> None:
    """An account defined both here and in xmpp_conf is an error at the xmpp_conf line."""
    write(tmp_path, XMPP_CONF, "xmpp.conf")
    err = error_of(tmp_path, ACCOUNT + "[general]\nxmpp_conf = xmpp.conf\n")
    assert_error(err, tmp_path / "agi_xmpp.conf", 5, "asterisk", "also defined")


def test_missing_xmpp_conf_is_an_error(tmp_path: Path) -> None:
    """xmpp_conf naming a missing file is an error at its line."""
    err = error_of(tmp_path, "[general]\nxmpp_conf = /nonexistent/xmpp.conf\n")
    assert_error(err, tmp_path / "agi_xmpp.conf", 2, "not found")


def test_render_accounts_round_trips(tmp_path: Path) -> None:
    """render_accounts() writes sections that load back to equal accounts (import-xmpp-conf)."""
    accounts = parse_xmpp_conf(write(tmp_path, XMPP_CONF, "xmpp.conf"))
    odd = AccountConfig(
        name="odd", username="odd@example.com/desk", secret='p;w "x"', statusmessage='"quoted"',
        priority=-3, resource="desk", buddies=("a@example.com",),
    )  # fmt: skip
    text = render_accounts([*accounts.values(), odd])
    assert "[asterisk]" in text and "secret = p\\;w" in text
    again = load(tmp_path, text).accounts
    assert dict(again) == {**accounts, "odd": odd}


def test_render_accounts_accepts_a_mapping() -> None:
    """render_accounts takes the accounts mapping of a Config as it is."""
    account = AccountConfig(name="a", username="a@example.com", secret="x")
    assert render_accounts({"a": account}).startswith("[a]\nusername = a@example.com\nsecret = x\n")


# ---------------------------------------------------------------------------- purity


def test_config_imports_no_io_frameworks() -> None:
    """Parsing config pulls in none of asyncio, slixmpp, aiohttp, SQLAlchemy, panoramisk."""
    code = (
        "import sys, agi_xmpp.config; "
        "bad = [m for m in ('asyncio', 'slixmpp', 'aiohttp', 'sqlalchemy', 'panoramisk') "
        "if m in sys.modules]; "
        "print(','.join(bad))"
    )
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == ""


def test_the_shipped_sample_config_loads(tmp_path: Path) -> None:
    """etc/agi_xmpp.conf (the sample users copy) parses, and documents every key."""
    sample = Path(__file__).resolve().parent.parent / "etc" / "agi_xmpp.conf"
    config = load_config(sample)
    assert config.general == GeneralConfig()
    text = sample.read_text()
    for key in sorted(_GENERAL_KEYS | _AMI_KEYS | _CLIENT_KEYS | _OUR_ACCOUNT_KEYS):
        assert f";{key} =" in text or f"; {key} =" in text or f"\n{key} =" in text, key


def _documented(section_heading: str) -> dict[str, str]:
    """The ``| `key` | default |`` rows of one section's table in docs/configuration.md."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()
    body = text.split(section_heading + "\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| ([^|]*) \|", body, re.MULTILINE)
    return {key: default.strip().strip("`") for key, default in rows}


def test_configuration_md_lists_every_account_key():
    """The accounts table documents exactly the keys an account section may hold."""
    assert set(_documented("## Accounts")) == _CLIENT_KEYS | _OUR_ACCOUNT_KEYS


@pytest.mark.parametrize("heading,keys,defaults", [
    ("## `[general]`", _GENERAL_KEYS, GeneralConfig()),
    ("## `[ami]`", _AMI_KEYS, AmiConfig(username="", secret="")),
])
def test_configuration_md_lists_every_key_with_its_default(heading, keys, defaults):
    """docs/configuration.md documents exactly the keys config.py reads, and each plain default
    (number, yes/no, word) is the dataclass's own."""
    documented = _documented(heading)
    assert set(documented) == set(keys)
    for key, text in documented.items():
        value = getattr(defaults, key)
        if isinstance(value, bool):
            assert text == ("yes" if value else "no"), key
        elif isinstance(value, int | str) and not text.startswith(("*", "sqlite")):
            assert text == str(value), key
        elif isinstance(value, tuple) and value and all(isinstance(v, str) for v in value):
            assert text == ", ".join(value), key


def test_security_and_limit_keys(tmp_path):
    """http_hosts, the connection budgets and archive_retention parse, with their defaults."""
    g = load(tmp_path, "[general]\n").general
    assert (g.http_hosts, g.agi_max_connections, g.http_max_connections, g.archive_retention) == ((), 4096, 256, 90)
    g = load(tmp_path, "[general]\nhttp_hosts = PBX.example.com, board.example.com:8443\n"
                       "agi_max_connections = 100\nhttp_max_connections = 20\narchive_retention = 0\n").general
    assert g.http_hosts == ("pbx.example.com", "board.example.com:8443")
    assert (g.agi_max_connections, g.http_max_connections, g.archive_retention) == (100, 20, 0)
    err = error_of(tmp_path, "[general]\nhttp_hosts = evil example\n")
    assert_error(err, tmp_path / "agi_xmpp.conf", 2, "http_hosts")
    # a port the HTTP API could never match is refused here, not ignored there (config.split_host)
    err = error_of(tmp_path, "[general]\nhttp_hosts = pbx.example.com:99999\n")
    assert_error(err, tmp_path / "agi_xmpp.conf", 2, "http_hosts")
    err = error_of(tmp_path, "[general]\nagi_max_connections = 2\n")
    assert_error(err, tmp_path / "agi_xmpp.conf", 2, "agi_max_connections")
