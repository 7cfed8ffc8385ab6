"""The resolver chain in-process: a fault while forwarding never leaves a question stuck."""

from __future__ import annotations

import dns.message
import dns.rcode

from resolver.catalog import load_catalog
from resolver.config import parse_config
from resolver.pipeline import Resolver
from resolver.policy import PolicyState, build_policy
from resolver.upstream import Forwarder


class Collect:
    """A sink like the UDP listener: keeps what would be sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, object]] = []

    def send(self, out: bytes, addr: object) -> None:
        self.sent.append((out, addr))

    def expect(self) -> None:
        pass


def test_an_error_starting_the_exchange_answers_servfail_and_frees_the_question():
    config = parse_config({"upstreams": ["127.0.0.1:9"]})
    catalog = load_catalog(config.catalog)
    policy = build_policy(catalog, PolicyState(), config)
    forwarder = Forwarder([("127.0.0.1", 9)])
    resolver = Resolver(config, policy, forwarder)

    def broken_start(query, done, budget=None):  # noqa: ANN001 - Forwarder.start's signature
        raise RuntimeError("injected fault")

    # An injected fault in the forwarder, not a stand-in for it: what is tested is the
    # chain's bookkeeping around it (in-flight table, waiting count, the client's answer).
    forwarder.start = broken_start  # type: ignore[method-assign]
    sink = Collect()
    for ident in (1, 2):
        query = dns.message.make_query("forwarded.example", "A")
        query.id = ident
        assert resolver.handle(query.to_wire(), "127.0.0.1", sink, ("127.0.0.1", 5353)) is None
    # Both asks were answered at once, SERVFAIL with their own IDs; nothing stays in flight.
    answers = [dns.message.from_wire(out) for out, _ in sink.sent]
    assert [(a.id, a.rcode()) for a in answers] == [
        (1, dns.rcode.SERVFAIL),
        (2, dns.rcode.SERVFAIL),
    ]
    assert [addr for _, addr in sink.sent] == [("127.0.0.1", 5353)] * 2
    assert resolver.forward.inflight == {}
    assert resolver.forward.waiting == 0
