"""mt6dctl without a supervisor: argument handling, not-running codes, the command units."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mt6d_mp import commands, ctl, runtime


def config(tmp_path: Path, runtime: Path) -> Path:
    p = tmp_path / "mt6d.toml"
    p.write_text(f'[runtime]\ndir = "{runtime}"\n')
    return p


def test_every_command_documents_its_wire_format() -> None:
    for name, c in commands.COMMANDS.items():
        doc = c.__doc__ or ""
        assert c.name == name and doc.strip()
        if c.daemon:
            assert "Wire:" in doc, name


def test_every_command_has_its_client_half_and_its_docstring_is_the_help() -> None:
    assert list(ctl.CLIENTS) == list(commands.COMMANDS)
    for name, client in ctl.CLIENTS.items():
        assert client.name == name and client.command is commands.COMMANDS[name]
    sub = next(a for a in ctl.parser()._actions if a.dest == "command")
    for name, p in sub.choices.items():  # type: ignore[union-attr]
        assert p.description == commands.COMMANDS[name].__doc__


def test_runtime_dir_is_read_from_the_config_alone(tmp_path: Path) -> None:
    rt = tmp_path / "run"
    assert ctl.runtime_dir_of(config(tmp_path, rt)) == rt
    (tmp_path / "other.toml").write_text("[log]\nlevel = 'info'\n")
    assert ctl.runtime_dir_of(tmp_path / "other.toml") == Path(runtime.DEFAULT_RUNTIME_DIR)


@pytest.mark.parametrize("command, code", [("status", 3), ("routes", 7), ("reload", 7),
                                           ("stop", 7)])
def test_not_running(tmp_path: Path, command: str, code: int,
                     capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config(tmp_path, tmp_path / "run")
    args = [command, "all"] if command == "stop" else [command]
    assert ctl.main(["-c", str(cfg), *args]) == code
    assert "not running" in capsys.readouterr().err


def test_stale_pid_file_status_is_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rt = tmp_path / "run"
    rt.mkdir()
    (rt / "supervisor.pid").write_text("999999999\n")
    (rt / "control.sock").write_text("")
    cfg = config(tmp_path, rt)
    assert ctl.main(["-c", str(cfg), "status"]) == 1
    assert ctl.main(["-c", str(cfg), "status", "--json"]) == 1
    out = capsys.readouterr().out
    assert json.loads(out)["running"] is False


def test_missing_config_is_6_and_bad_arguments_2(tmp_path: Path) -> None:
    assert ctl.main(["-c", str(tmp_path / "nope.toml"), "status"]) == 6
    assert ctl.main(["-c", str(tmp_path / "nope.toml"), "frobnicate"]) == 2
    assert ctl.main(["start"]) == 2  # start needs a worker name


def test_status_exit_code_from_worker_states() -> None:
    running = {"workers": [{"state": "running"}, {"state": "running"}]}
    degraded = {"workers": [{"state": "running"}, {"state": "backoff"}]}
    assert ctl.status_code(running) == 0
    assert ctl.status_code(degraded) == 150


def test_dispatch_never_raises() -> None:
    class Broken:
        def status_data(self) -> dict[str, object]:
            raise RuntimeError("boom")

    reply = commands.COMMANDS["status"].dispatch(Broken(), [])  # type: ignore[arg-type]
    assert reply["code"] == 1 and "boom" in reply["error"]


def test_metrics_render_the_status_reply() -> None:
    from mt6d_mp.metrics import parse_listen, render

    text = render({
        "uptime": 12.5, "tunnel_mtu": 1452,
        "workers": [{"name": "a-b", "state": "running", "restarts": 1, "packets_out": 10,
                     "packets_in": 9, "bytes_out": 1000, "bytes_in": 900,
                     "drops": {"replay": 2}, "counters": {"ptb_sent": 3}},
                    {"name": "icmp", "state": "backoff", "restarts": 0, "drops": {}}],
        "streams": [{"name": "a-b", "active": {"epoch": 42}}],
    })
    lines = text.splitlines()
    assert "# TYPE mt6d_worker_packets_total counter" in lines
    assert 'mt6d_worker_packets_total{worker="a-b",direction="out"} 10' in lines
    assert 'mt6d_worker_drops_total{worker="a-b",reason="replay"} 2' in lines
    assert 'mt6d_worker_up{worker="icmp"} 0' in lines
    assert 'mt6d_worker_packet_too_big_sent_total{worker="a-b"} 3' in lines
    assert 'mt6d_stream_epoch{stream="a-b"} 42' in lines
    assert "mt6d_tunnel_mtu_bytes 1452" in lines
    # every family is declared once, before its samples
    assert sum(1 for x in lines if x.startswith("# TYPE mt6d_worker_packets_total ")) == 1
    assert parse_listen("[::1]:9469") == ("::1", 9469)
    assert parse_listen("127.0.0.1:80") == ("127.0.0.1", 80)
    for bad in ("localhost:80", "::1:80x", "127.0.0.1", "[::1]:0"):
        with pytest.raises(ValueError):
            parse_listen(bad)


def test_metrics_values_are_exact() -> None:
    from mt6d_mp.metrics import render

    text = render({"uptime": 12.25, "tunnel_mtu": 1452,
                   "workers": [{"name": "a-b", "state": "running", "bytes_out": 123456789012}],
                   "streams": [{"name": "a-b", "active": {"epoch": 898296599}}]})
    lines = text.splitlines()
    # consecutive epochs must differ, and a rate over large byte counters must be exact
    assert 'mt6d_stream_epoch{stream="a-b"} 898296599' in lines
    assert 'mt6d_worker_bytes_total{worker="a-b",direction="out"} 123456789012' in lines
    assert "mt6d_supervisor_uptime_seconds 12.25" in lines


@pytest.mark.parametrize("reply", [{"workers": "x"}, {"pid": 1}, {"workers": [{"name": "s"}]}])
def test_a_reply_of_another_shape_is_a_failed_command_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    reply: dict[str, object],
) -> None:
    monkeypatch.setattr(ctl.Ctl, "call", lambda self, *frames: reply)
    assert ctl.main(["--runtime-dir", str(tmp_path), "status"]) == ctl.STATUS_UNKNOWN
    assert "unexpected reply from the supervisor" in capsys.readouterr().err


def test_top_frame_shows_rates_routes_keys_and_drops_per_second() -> None:
    def reply(out: int, dropped: int) -> dict[str, Any]:
        return {"pid": 7, "uptime": 65.0, "tunnel_mtu": 1452, "firewall_drops": {"fragment": 3},
                "workers": [{"name": "s1", "state": "running", "packets_out": out,
                             "packets_in": out // 2, "bytes_out": out * 100,
                             "bytes_in": out * 50, "drops": {"no_key": dropped}},
                            {"name": "icmp", "state": "running", "drops": {}}],
                "streams": [{"name": "s1", "next_rotation_in": 0.7, "key_state": "keyed",
                             "key_phase": 3, "key_age": 42.0, "next_rekey_in": 80.0,
                             "active": {"epoch": 881234, "key_phase": 3}}]}

    frame = ctl.render_top(reply(1000, 4), reply(3000, 10), 2.0)
    lines = frame.splitlines()
    row = next(x for x in lines if x.startswith("s1 "))
    assert row.split()[2:6] == ["1.0k", "500", "800.0k", "400.0k"], row
    assert "881234 p3" in row and "0.7s" in row and "phase 3 age 42.0s" in row and "rekey in 1m20s" in row
    assert "drops/s no_key=3" in frame and "fragment=3" in frame and "up 1m05s" in lines[0]
    expired = reply(3000, 10)
    expired["streams"][0].update(key_state="expired", active=None)
    assert "EXPIRED (sends nothing)" in ctl.render_top(reply(3000, 10), expired, 1.0)
