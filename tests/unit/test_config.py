"""Configuration loading: the examples load; every mistake names its place."""

from __future__ import annotations

import os
import re
import shutil
import tomllib
from pathlib import Path

import pytest

from mt6d_mp.core import config as cfg
from mt6d_mp.errors import ConfigError
from mt6d_mp.keygen import write_key

CONF = Path(__file__).resolve().parents[2] / "conf"


@pytest.fixture
def gw(tmp_path: Path) -> Path:
    """A copy of the example gateway A with a freshly generated key; returns its main file."""
    d = tmp_path / "gw"
    shutil.copytree(CONF / "gateway-a", d)
    write_key(str(d / "keys" / "host-a-host-b.key"))
    return d / "mt6d.toml"


def problems(path: Path, **kw: object) -> str:
    with pytest.raises(ConfigError) as e:
        cfg.load(path, **kw)  # type: ignore[arg-type]
    return str(e.value)


def test_example_gateways_load(tmp_path: Path) -> None:
    loaded = []
    for g in ("gateway-a", "gateway-b"):
        d = tmp_path / g
        shutil.copytree(CONF / g, d)
        if not loaded:
            write_key(str(d / "keys" / "host-a-host-b.key"))
        else:
            (d / "keys").mkdir(mode=0o700)
            shutil.copy2(tmp_path / "gateway-a" / "keys" / "host-a-host-b.key", d / "keys")
        loaded.append(cfg.load(d / "mt6d.toml"))
    a, b = loaded
    (sa,), (sb,) = a.streams, b.streams
    assert sa.name == "mt6d-host-a-mt6d-host-b" and sa.queue == 2
    assert str(sa.local.address) == "2001:468:c80:c111::1"
    assert sa.local.mac == bytes.fromhex("00abcd112201")
    assert sa.local == sb.remote and sa.remote == sb.local and sa.key == sb.key
    assert a.internal == "eth1" and a.external == "eth0" and a.bridging == "eth0"
    assert a.rotation_time == 10.0 and a.effective_crypt == "aes-256-gcm"
    assert a.icmp_queue == 1


def test_keys_never_appear_in_repr(gw: Path) -> None:
    c = cfg.load(gw)
    secret = c.streams[0].key.secret
    assert len(secret) == 64
    for text in (repr(c), str(c), repr(c.streams[0])):
        assert secret.hex() not in text and "512 bits" in text


def test_example_documents_every_key_with_its_default() -> None:
    example = tomllib.loads((CONF / "mt6d.toml.example").read_text())
    assert set(example) == set(cfg.SCHEMA)
    for section, keys in cfg.SCHEMA.items():
        assert set(example[section]) == set(keys), section
        for key, spec in keys.items():
            assert example[section][key] == spec.default, f"{section}.{key}"


def test_command_line_overrides_the_file(gw: Path) -> None:
    c = cfg.load(gw, {"rotation.rotation_time": 2, "rotation.route_lifetime": 4.0,
                      "interfaces.internal": "int0"})
    assert c.rotation_time == 2.0 and c.route_lifetime == 4.0 and c.internal == "int0"
    assert cfg.parse_override("rotation.rotation_time=5") == ("rotation.rotation_time", 5)
    assert cfg.parse_override("interfaces.external=ext0") == ("interfaces.external", "ext0")
    with pytest.raises(ConfigError, match=r"section\.key=value"):
        cfg.parse_override("rotation_time=5")
    msg = problems(gw, overrides={"rotation.rotation_time": -1})
    assert "command line: rotation.rotation_time = -1" in msg


def append(path: Path, text: str) -> None:
    with path.open("a") as f:
        f.write(text)


def test_unknown_key(gw: Path) -> None:
    append(gw, "\n[rotation2]\nx = 1\n")
    text = gw.read_text().replace("rotation_time = 10.0", "rotation_tme = 10.0")
    gw.write_text(text)
    msg = problems(gw)
    assert f"{gw}: unknown key rotation.rotation_tme" in msg and "rotation_time" in msg
    assert f"{gw}: unknown section [rotation2]" in msg


def test_bad_value_type(gw: Path) -> None:
    gw.write_text(gw.read_text().replace("encrypt = true", 'encrypt = "yes"'))
    assert f"{gw}: crypto.encrypt = 'yes': expected true or false" in problems(gw)


def test_keep_warm_milliseconds(gw: Path) -> None:
    assert cfg.load(gw).keep_warm_ms == 5
    assert cfg.load(gw, {"tunnel.keep_warm_ms": 0}).keep_warm_ms == 0  # off
    assert cfg.load(gw).receive_buffer_kb == 4096
    assert cfg.load(gw, {"tunnel.receive_buffer_kb": 256}).receive_buffer_kb == 256
    for bad in (0, 63, 65537):
        assert "64..65536 KB" in problems(gw, overrides={"tunnel.receive_buffer_kb": bad})
    assert cfg.load(gw).queue_target_ms == 5.0 and cfg.load(gw).queue_interval_ms == 100.0
    assert cfg.load(gw, {"tunnel.queue_target_ms": 0}).queue_target_ms == 0  # off
    for bad in (0.1, -1, 1001):
        assert "0 (no queue management) or 0.5..1000 ms" in problems(
            gw, overrides={"tunnel.queue_target_ms": bad})
    assert "5..10000 ms" in problems(gw, overrides={"tunnel.queue_interval_ms": 1})
    # poll() takes whole milliseconds: 0.5 would make the worker spin.
    assert "expected an integer" in problems(gw, overrides={"tunnel.keep_warm_ms": 0.5})
    for bad in (101, -1):
        msg = problems(gw, overrides={"tunnel.keep_warm_ms": bad})
        assert "expected 0 (off) or 1..100 milliseconds" in msg


def test_bad_choice(gw: Path) -> None:
    gw.write_text(gw.read_text().replace('"aes-256-gcm"', '"aes-128-cbc"'))
    assert "crypto.crypt_type = 'aes-128-cbc': expected one of 'aes-256-gcm'" in problems(gw)


def test_invalid_toml_names_the_line(gw: Path) -> None:
    append(gw, "\n[log\n")
    msg = problems(gw)
    assert f"{gw}: not valid TOML" in msg and re.search(r"line \d+", msg)


def test_missing_file(tmp_path: Path) -> None:
    assert "cannot read the configuration" in problems(tmp_path / "nope.toml")


def test_bad_address_in_users(gw: Path) -> None:
    append(gw.parent / "users", "2001:db8::zz  host-x\n")
    assert f"{gw.parent / 'users'}:5: '2001:db8::zz' is not an IPv6 address" in problems(gw)


def test_bad_mac_in_ethers(gw: Path) -> None:
    append(gw.parent / "ethers", "00:ab:cd:11:22  2001:db8::5\n")
    assert f"{gw.parent / 'ethers'}:4: not a MAC address: '00:ab:cd:11:22'" in problems(gw)


def test_profile_naming_unknown_host(gw: Path) -> None:
    append(gw.parent / "profiles", "mt6d-host-a  host-z  3  @keys/host-a-host-b.key\n")
    msg = problems(gw)
    assert f"{gw.parent / 'profiles'}:6: host 'host-z' is not in the users file {gw.parent / 'users'}" in msg


def test_host_without_mac(gw: Path) -> None:
    append(gw.parent / "users", "2001:468:c80:c111::3  host-c\n")
    append(gw.parent / "profiles", "mt6d-host-a  host-c  3  @keys/host-a-host-b.key\n")
    assert "host 'host-c' (2001:468:c80:c111::3) has no MAC in the ethers file" in problems(gw)


def test_key_too_short(gw: Path) -> None:
    profiles = gw.parent / "profiles"
    profiles.write_text("mt6d-host-a mt6d-host-b 2 " + "ab" * 16 + "\n")
    profiles.chmod(0o600)
    assert f"{profiles}:1: the session key has 128 bits; expected at least 256" in problems(gw)


def test_key_not_hex(gw: Path) -> None:
    profiles = gw.parent / "profiles"
    profiles.write_text("mt6d-host-a mt6d-host-b 2 " + "zz" * 64 + "\n")
    profiles.chmod(0o600)
    assert f"{profiles}:1: the session key is not hex" in problems(gw)


def test_inline_key_in_a_readable_profiles_file(gw: Path) -> None:
    profiles = gw.parent / "profiles"
    profiles.write_text("mt6d-host-a mt6d-host-b 2 " + "ab" * 64 + "\n")
    profiles.chmod(0o644)
    assert f"{profiles}: holds key material but its mode is 0644" in problems(gw)


def test_key_file_readable_by_others(gw: Path) -> None:
    key = gw.parent / "keys" / "host-a-host-b.key"
    os.chmod(key, 0o640)
    msg = problems(gw)
    assert f"{gw.parent / 'profiles'}:5: {key}: holds key material but its mode is 0640" in msg


def test_duplicate_stream(gw: Path) -> None:
    append(gw.parent / "profiles", "mt6d-host-b  mt6d-host-a  3  @keys/host-a-host-b.key\n")
    msg = problems(gw)
    assert f"{gw.parent / 'profiles'}:6: duplicate stream mt6d-host-b <-> mt6d-host-a" in msg
    assert f"(first at {gw.parent / 'profiles'}:5)" in msg


def test_streams_that_share_a_queue_form_a_shard(gw: Path) -> None:
    """Two profiles naming one queue: one worker carries both (README, "How it works", Shards)."""
    append(gw.parent / "users", "2001:468:c80:c111::3  host-c\n")
    append(gw.parent / "ethers", "00:ab:cd:11:22:03  2001:468:c80:c111::3\n")
    key = gw.parent / "keys" / "host-a-host-c.key"
    key.write_text("ab" * 64 + "\n")
    key.chmod(0o600)
    append(gw.parent / "profiles", "mt6d-host-a  host-c  2  @keys/host-a-host-c.key\n")
    c = cfg.load(gw)
    assert [s.queue for s in c.streams] == [2, 2]


def test_two_streams_of_a_host_with_one_key_are_refused(gw: Path) -> None:
    append(gw.parent / "users", "2001:468:c80:c111::3  host-c\n")
    append(gw.parent / "ethers", "00:ab:cd:11:22:03  2001:468:c80:c111::3\n")
    append(gw.parent / "profiles", "mt6d-host-a  host-c  3  @keys/host-a-host-b.key\n")
    profiles = gw.parent / "profiles"
    msg = problems(gw)
    assert (f"{profiles}:6: stream mt6d-host-a-host-c has the key of mt6d-host-a-mt6d-host-b "
            f"({profiles}:5) and shares host mt6d-host-a with it") in msg, msg


def test_stream_queue_equal_to_icmp_queue(gw: Path) -> None:
    gw.write_text(gw.read_text().replace("icmp = 1", "icmp = 2"))
    assert "queue 2 is the ICMP worker's (queues.icmp)" in problems(gw)


def test_every_problem_is_reported_at_once(gw: Path) -> None:
    append(gw.parent / "users", "bogus host-x\n")
    append(gw.parent / "ethers", "nope 2001:db8::1\n")
    msg = problems(gw)
    assert "users:5" in msg and "ethers:4" in msg


def test_route_lifetime_shorter_than_rotation(gw: Path) -> None:
    gw.write_text(gw.read_text().replace("route_lifetime = 10.0", "route_lifetime = 5.0"))
    assert "rotation.route_lifetime = 5.0: expected at least rotation.rotation_time" in problems(gw)


def test_no_streams(gw: Path) -> None:
    (gw.parent / "profiles").write_text("# nothing\n")
    assert "no streams defined" in problems(gw)


def test_rekey_timers_that_cannot_work_are_refused(gw: Path) -> None:
    rot = cfg.load(gw).rotation_time
    msg = problems(gw, overrides={"crypto.regen_interval": rot})
    assert f"crypto.regen_interval = {float(rot)}: expected 0 or at least" in msg, msg
    msg = problems(gw, overrides={"crypto.regen_interval": 60, "crypto.regen_limit": 61})
    assert "crypto.regen_limit = 61.0: expected more than regen_interval" in msg, msg
    c = cfg.load(gw, {"crypto.regen_interval": 60, "crypto.regen_window": 4})
    assert c.effective_regen_limit == 94.0
    assert cfg.load(gw, {"crypto.regen_interval": 0}).effective_regen_limit == 0.0


def test_queue_numbers_above_32767_are_the_segmenting_queues(gw: Path) -> None:
    from mt6d_mp.core.queues import MAX_QUEUE, segment_queue

    assert MAX_QUEUE == 32767 and segment_queue(0) == 32768 and segment_queue(MAX_QUEUE) == 65535
    profiles = gw.parent / "profiles"
    profiles.write_text(profiles.read_text().replace("  2  @keys", "  40000  @keys"))
    msg = problems(gw)
    assert "queue '40000': expected a number 0..32767 (32768 and up are the streams' segmenting " \
           "queues)" in msg, msg
    gw.write_text(gw.read_text().replace("icmp = 1", "icmp = 32768"))
    assert "a queue number 0..32767" in problems(gw)


# --- host mode (README "Host mode") -------------------------------------------------------------


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """A copy of the example host A in host mode with a fresh key; returns its main file."""
    d = tmp_path / "host"
    shutil.copytree(CONF / "host-a", d)
    write_key(str(d / "keys" / "host-a-host-b.key"))
    return d / "mt6d.toml"


def test_host_mode_example_loads_with_no_internal_interface(host: Path) -> None:
    c = cfg.load(host)
    assert c.mode == "host" and c.host_mode
    assert c.internal == "" and c.external == "eth0" and c.bridging == "eth0"
    (s,) = c.streams
    assert str(s.local.address) == "2001:468:c80:c111::1"
    assert s.local.mac == bytes.fromhex("00abcd112201")  # the ethers file's, as the peer hashes it


def test_gateway_mode_is_the_default(gw: Path) -> None:
    c = cfg.load(gw)
    assert c.mode == "gateway" and not c.host_mode and c.internal == "eth1"


def test_host_mode_with_an_internal_interface_is_refused(host: Path, gw: Path) -> None:
    text = host.read_text().replace('external = "eth0"', 'external = "eth0"\ninternal = "eth1"')
    host.write_text(text)
    msg = problems(host)
    assert "interfaces.internal = 'eth1': host mode has no internal interface" in msg
    # The same from the command line, against a gateway's file.
    msg = problems(gw, overrides={"interfaces.mode": "host"})
    assert "interfaces.internal = 'eth1': host mode has no internal interface" in msg
    msg = problems(gw, overrides={"interfaces.mode": "hosted"})
    assert "interfaces.mode = 'hosted': expected one of 'gateway', 'host'" in msg


def test_host_mode_needs_no_distinct_internal_interface(host: Path) -> None:
    # internal == external is a gateway's mistake; in host mode there is no internal interface
    c = cfg.load(host, {"interfaces.external": "eth1"})
    assert c.external == "eth1" and c.internal == ""
