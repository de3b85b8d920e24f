"""What one client may cost the server before its request is even parsed: body size (read and
inflated), read timeouts, open connections. The model's own limits (pixels an image may declare,
instances a request may carry) are in the exported graph and in BatchingOptions."""
from __future__ import annotations

import dataclasses

MIB = 2**20


@dataclasses.dataclass(frozen=True)
class ServerLimits:
    # The most bytes a REST body may have, as sent and once inflated (gzip/deflate), and a gRPC
    # message. A request of 1,000 photos of 40 KB is some 55 MB as base64 JSON; parsing JSON costs
    # about 25 times its size in memory, so the limit bounds a request's peak too.
    max_body_bytes: int = 64 * MIB
    # A gzip/deflate body that inflates more than max_inflate_ratio times the compressed bytes it came
    # from, once past its first inflate_ratio_after bytes, is refused: requests compress a few times
    # (base64 photos barely at all), a bomb some 1000 times, so it is stopped after about a MiB of work.
    max_inflate_ratio: float = 100.0
    inflate_ratio_after: int = MIB
    # Seconds a client has to send a request's headers (counted from the connection, or from the
    # previous answer on a kept-alive one), and then its whole body.
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    # Open REST connections; one more is closed at once (each costs a file descriptor and a buffer).
    max_connections: int = 256
    # Jobs of one client (a connection) outside the model (inflating, parsing, the header check, the
    # answer) running at a time: the rest wait, and the clients take turns (serving/fair.py), so 200
    # requests sent at once are not 200 jobs ahead of another client's on the workers.
    max_parsing_per_client: int = 2
    # Seconds a refusal for a full queue (UNAVAILABLE, 503) is held before it is answered, so that a
    # client retrying in a loop costs a request per delay (serving/fair.py, Pushback); 0: at once. At
    # most max_held_refusals are held at a time, the rest answered at once.
    refusal_delay: float = 0.1
    max_held_refusals: int = 64

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "refusal_delay":  # 0 turns the hold off
                if value < 0:
                    raise ValueError(f"refusal_delay must be at least 0, got {value}")
            elif not value > 0:
                raise ValueError(f"{field.name} must be positive, got {value}")

    def describe(self) -> str:
        return (f"bodies up to {self.max_body_bytes // MIB} MiB (inflating at most {self.max_inflate_ratio:g}:1), headers within {self.header_timeout:g} s, "
                f"bodies within {self.body_timeout:g} s, {self.max_connections} connections, "
                f"{self.max_parsing_per_client} jobs of a client outside the model at a time, "
                f"refusals of a full queue held {self.refusal_delay:g} s (at most {self.max_held_refusals})")
