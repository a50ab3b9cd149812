"""df-cni's input handling without a node (the plugin against real nodes:
tests/fullstack/test_cni.py): environment, configuration, versions, error JSON."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dragonflow.cli import cni

ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "abc123", "CNI_NETNS": "/var/run/netns/x",
       "CNI_IFNAME": "eth0"}
CONF = {"cniVersion": "1.0.0", "name": "pods", "type": "df-cni", "network": "n",
        "dragonflow": {"nb_url": "memory://cni-unit"}}


def error_of(env: dict[str, str], conf: Any) -> cni.CniError:
    raw = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
    with pytest.raises(cni.CniError) as exc:
        cni.execute(env, raw)
    return exc.value


@pytest.mark.parametrize("env, code, text", [
    ({**ENV, "CNI_COMMAND": ""}, 4, "CNI_COMMAND is not set"),
    ({**ENV, "CNI_COMMAND": "GC"}, 4, "'GC' is not supported"),
    ({**ENV, "CNI_CONTAINERID": ""}, 4, "CNI_CONTAINERID is not set"),
    ({**ENV, "CNI_CONTAINERID": "-bad id"}, 4, "CNI_CONTAINERID '-bad id' is invalid"),
    ({**ENV, "CNI_IFNAME": "a-very-long-interface"}, 4, "CNI_IFNAME"),
    ({**ENV, "CNI_NETNS": ""}, 4, "CNI_NETNS is not set"),
    ({**ENV, "CNI_ARGS": "A=1;broken"}, 4, "CNI_ARGS: 'broken' is not K=V"),
])
def test_environment_errors(env: dict[str, str], code: int, text: str) -> None:
    e = error_of(env, CONF)
    assert e.code == code and text in e.msg


@pytest.mark.parametrize("conf, code, text", [
    (b"", 6, "no network configuration"),
    (b"[1]", 6, "must be a JSON object"),
    (b"{nope", 6, "not valid JSON"),
    ({**CONF, "cniVersion": None}, 7, "cniVersion: required"),
    ({**CONF, "cniVersion": "0.3.1"}, 1, "'0.3.1' is not supported; supported: 0.4.0, 1.0.0"),
    ({k: v for k, v in CONF.items() if k != "network"}, 7, "network: required field"),
    ({**CONF, "name": ""}, 7, "name: required"),
    ({**CONF, "netwrok": "n"}, 2, "netwrok: unsupported field"),
    ({**CONF, "ipam": {"type": "host-local"}}, 2, "ipam: unsupported field"),
    ({**CONF, "dragonflow": {"nb_uri": "x"}}, 2, "dragonflow.nb_uri: unsupported field"),
    ({**CONF, "dragonflow": {"config_file": "/no/such.ini"}}, 7,
     "dragonflow.config_file: /no/such.ini does not exist"),
    ({**CONF, "dragonflow": {"nb_url": "memory://", "host_netns": "no-such-ns"}}, 7,
     "dragonflow.host_netns: /var/run/netns/no-such-ns does not exist"),
    ({**CONF, "mtu": 20}, 7, "mtu: must be a number in 68..65535"),
    ({**CONF, "mtu": 1400.5}, 7, "mtu: must be an integer"),
    ({**CONF, "security_groups": "sg"}, 7, "security_groups: must be a list"),
    ({**CONF, "dragonflow": {"nb_url": "memory://", "active_timeout": -1}}, 7,
     "dragonflow.active_timeout: must be a number in 0..3600"),
])
def test_configuration_errors(conf: Any, code: int, text: str) -> None:
    e = error_of(ENV, conf)
    assert e.code == code and text in e.msg, e.msg
    out = e.to_json("1.0.0")
    assert set(out) == {"cniVersion", "code", "msg", "details"}


def test_version_answers_whatever_the_configuration() -> None:
    env = {"CNI_COMMAND": "VERSION"}
    assert cni.execute(env, b'{"cniVersion": "0.4.0"}') == {
        "cniVersion": "0.4.0", "supportedVersions": ["0.4.0", "1.0.0"]}
    assert cni.execute(env, b"")["cniVersion"] == "1.0.0"  # type: ignore[index]


def test_del_with_nothing_there_succeeds(monkeypatch: pytest.MonkeyPatch) -> None:
    """DEL of an attachment that never existed (no OVS interface, no link, no NB port)."""
    calls: list[list[str]] = []

    def fake_run(cmd: list[str], what: str, check: bool = True, timeout: float = 30.0) -> Any:
        calls.append(cmd)

        class P:
            returncode = 0 if "find" in cmd or "del-port" in cmd else 1
            stdout = '{"data": [], "headings": []}' if "find" in cmd else ""
            stderr = ""
            args = cmd
        return P()
    monkeypatch.setattr(cni, "run", fake_run)
    assert cni.execute({**ENV, "CNI_COMMAND": "DEL", "CNI_NETNS": ""},
                       json.dumps(CONF).encode()) is None
    assert any("del-port" in c for c in calls)


def test_names_are_derived_from_the_attachment() -> None:
    a = cni.host_ifname("pods", "abc", "eth0")
    assert a == cni.host_ifname("pods", "abc", "eth0") and len(a) <= 15
    assert a != cni.host_ifname("pods", "abc", "eth1") != cni.host_ifname("other", "abc", "eth0")
    assert cni.port_id_for("pods", "abc", "eth0") == cni.port_id_for("pods", "abc", "eth0")
    assert cni.port_id_for("pods", "abc", "eth0") != cni.port_id_for("pods", "abd", "eth0")


def test_main_prints_the_error_json(capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import sys

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b'{"cniVersion": "0.4.0"')))
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    assert cni.main([]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["code"] == 6 and out["cniVersion"] == "1.0.0"
    assert cni.main(["--help"]) == 0
    assert "CNI_COMMAND" in capsys.readouterr().out
