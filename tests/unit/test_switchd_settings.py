"""switchd's pure parts: settings validation, log masking, dispatcher rules, sd_notify."""

from __future__ import annotations

import io
import json
import socket

import pytest

from passerelle.codecs.iso8583 import Message, encode
from passerelle.codecs.profiles import get_profile
from passerelle.config import ConfigError, parse_config
from passerelle.switchd import logs
from passerelle.switchd.dispatch import Dispatcher, SessionContext, default_registry, response_mti
from passerelle.switchd.metrics import Metrics
from passerelle.switchd.sdnotify import Notifier

CB2A = get_profile("cb2a")


def test_an_empty_file_is_every_default() -> None:
    settings = parse_config({})
    assert settings.listeners.xot.port == 1998
    assert settings.listeners.cbcom.port == 4000
    assert settings.listeners.cbcom_tls.port == 4443 and not settings.listeners.cbcom_tls.enabled
    assert settings.listeners.iso.port == 5000
    assert (settings.x25.packet_size, settings.x25.window) == (128, 2)
    assert (settings.cbcom.tsi, settings.cbcom.tgr) == (780.0, 30.0)


@pytest.mark.parametrize(("raw", "message"), [
    ({"listeners": {"xot": {"port": "abc"}}}, 'listeners.xot.port: expected int, got "abc"'),
    ({"listeners": {"cbcom-tls": {"port": 70000}}},
     "listeners.cbcom-tls.port: expected int <= 65535, got 70000"),
    ({"listeners": {"cbcom": {"colour": 1}}}, "listeners.cbcom.colour: unknown key"),
    ({"listner": {}}, "listner: unknown key"),
    ({"x25": {"packet_size": 100}}, "x25.packet_size: expected a power of two"),
    ({"x25": {"window": 8}}, "x25.window: 8 is larger than"),
    ({"cbcom": {"tsi": float("inf")}}, "cbcom.tsi: expected float <= 1000000.0, got inf"),
    ({"logging": {"level": "loud"}}, 'logging.level: not an allowed value, got "loud"'),
    ({"listeners": {"cbcom-tls": {"enabled": True}}},
     "listeners.cbcom-tls.cert: required when the listener is enabled"),
    ({"listeners": {"iso": {"port": 4000, "host": "0.0.0.0"}}},
     "listeners.iso.port: 4000 is already used by listeners.cbcom"),
])
def test_errors_name_the_key_and_the_value(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(raw)
    assert message in str(error.value)


def test_masking_leaves_no_pan_nor_track_data() -> None:
    stream = io.BytesIO()
    logs.configure("debug", stream)
    logs.get_logger().info("test.event", pan="4973019600600485",
                           track="4539795755326151=13082018550000001001",
                           dump=bytes.fromhex("01004973019600600485d1212201"),
                           nested={"card": ["5132830000000000123"]}, amount=3000)
    event = json.loads(stream.getvalue())
    text = stream.getvalue().decode()
    for secret in ("4973019600600485", "4539795755326151", "13082018550000001001",
                   "5132830000000000123", "d1212201"):
        assert secret not in text
    assert event["pan"] == "497301******0485"
    assert event["track"] == "453979******6151=****"
    assert event["amount"] == 3000 and event["event"] == "test.event"


@pytest.mark.parametrize(("mti", "answer"), [
    ("0100", "0110"), ("0101", "0110"), ("0420", "0430"), ("0421", "0430"),
    ("0800", "0810"), ("0804", "0814"), ("0805", "0814"), ("1804", "1814"),
    ("0110", None), ("0130", None), ("abcd", None), ("", None), ("0809", None),
])
def test_response_mti(mti: str, answer: str | None) -> None:
    assert response_mti(mti) == answer


class _Log:
    def __getattr__(self, name: str) -> object:
        return lambda *args, **kwargs: None


def _handle(message: bytes, mode: str | None = None) -> bytes | None:
    context = SessionContext("test", "peer", CB2A, _Log())
    context.mode = mode
    answer = Dispatcher(default_registry(), Metrics()).handle(message, context)
    assert answer is None or isinstance(answer, bytes)
    return answer


def test_dispatcher_rules() -> None:
    echo = Message.parse(_handle(encode(CB2A, "0800", {11: "000001", 70: "301"})), CB2A)
    assert (echo.mti, echo.get(39), echo.get(70)) == ("0810", "00", "301")
    sign_on = Message.parse(_handle(encode(CB2A, "0804", {11: "000002", 24: "862"})), CB2A)
    assert (sign_on.mti, sign_on.get(39)) == ("0814", "12")
    track = "4539795755326151D1308"
    unknown = Message.parse(_handle(encode(CB2A, "0200", {11: "000003", 35: track})), CB2A)
    assert (unknown.mti, unknown.get(39)) == ("0210", "12") and 35 not in unknown
    broken = Message.parse(_handle(encode(CB2A, "0800", {11: "000004", 70: "301"})[:-1]), CB2A)
    assert (broken.get(39), broken.get(44)) == ("30", (("AA", "07000"),))
    assert _handle(encode(CB2A, "0810", {11: "000005", 39: "00"})) is None
    assert _handle(b"\x08") is None


def test_notifier_reaches_an_abstract_socket() -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0passerelle-unit-notify")
        notifier = Notifier({"NOTIFY_SOCKET": "@passerelle-unit-notify",
                             "WATCHDOG_USEC": "3000000"})
        assert notifier.watchdog_interval == 1.5
        notifier.ready()
        assert sock.recv(100) == b"READY=1"
    silent = Notifier({})
    assert not silent.enabled
    silent.ready()  # no systemd: nothing happens, nothing fails
