"""Relay addresses (actors/_outbox.py): what the outbox and the subscriptions name a target by,
parsed and formatted in one place, a bad one refused with a message that names it."""

from __future__ import annotations

import uuid

import pytest

from actors import AddressKind, RelayAddress


@pytest.mark.parametrize(
    ("text", "kind", "key"),
    [
        ("session:abc123", AddressKind.SESSION, "abc123"),
        (
            "listen:7c0d5ad4-7b41-4a5f-9d35-0e6a3c1f0b9e",
            AddressKind.LISTEN,
            "7c0d5ad4-7b41-4a5f-9d35-0e6a3c1f0b9e",
        ),
        ("reply:42", AddressKind.REPLY, "42"),
        ("node:node-a:8000", AddressKind.NODE, "node-a:8000"),  # a key may hold colons
        ("relay:f00d", AddressKind.RELAY, "f00d"),
        ("stream:sess:_req_3", AddressKind.STREAM, "sess:_req_3"),
    ],
)
def test_an_address_parses_into_its_kind_and_key_and_formats_back(
    text: str, kind: AddressKind, key: str
) -> None:
    address = RelayAddress.parse(text)
    assert (address.kind, address.key) == (kind, key)
    assert address.format() == str(address) == text
    assert RelayAddress.parse(address.format()) == address


def test_the_constructors_write_what_the_relay_wrote_by_hand() -> None:
    conn = uuid.UUID("7c0d5ad4-7b41-4a5f-9d35-0e6a3c1f0b9e")
    assert RelayAddress.session("s1").format() == "session:s1"
    assert RelayAddress.listen(conn).format() == f"listen:{conn}"
    assert RelayAddress.reply(7).format() == "reply:7"
    assert RelayAddress.node("n1").format() == "node:n1"
    assert RelayAddress.relay("ab").format() == "relay:ab"
    stream = RelayAddress.stream("s1", "_req_9")
    assert stream.format() == "stream:s1:_req_9"
    assert stream.stream_parts == ("s1", "_req_9")
    assert {RelayAddress.session("s1"), RelayAddress.parse("session:s1")} == {
        RelayAddress.session("s1")
    }


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "a relay address is <kind>:<key>"),
        ("session", "a relay address is <kind>:<key>"),
        ("mailbox:1", "kind one of session, listen, reply, node, relay, stream; got 'mailbox:1'"),
        ("session:", "needs a key of 1 to 1024 characters, got ''"),
        ("stream:only-a-session", "a stream address is stream:<session>:<stream>"),
        ("stream::s", "a stream address is stream:<session>:<stream>"),
        ("session:" + "x" * 2000, "needs a key of 1 to 1024 characters"),
    ],
)
def test_a_bad_address_is_refused_with_the_rule_and_the_value(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=None) as caught:
        RelayAddress.parse(text)
    assert says in str(caught.value)


def test_an_address_is_a_frozen_value() -> None:
    address = RelayAddress.session("s1")
    with pytest.raises(AttributeError):
        address.key = "s2"  # type: ignore[misc]
