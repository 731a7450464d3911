"""What the MQTT bridge checks before a device's message may cost it anything: rate, token, memory.

Any client the broker lets in may publish on a device's topics, so the bridge
guards each device separately: a token bucket caps how many messages per second
it handles for one device (the excess is dropped before parsing), an optional
per-device token must be in the config that declares the device, and the formats
it learns from retained configs are kept in a bounded table rather than as
devices, so that litter left on the broker cannot fill the bridge.
"""

from __future__ import annotations

import hmac
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Generic, TypeVar

from duplexer.protocols.mqtt_topics import MAX_TOKEN_CHARS, valid_device_id
from duplexer.runtime.untrusted import UntrustedInputError, bounded_text, load_json

DEFAULT_DEVICE_IDLE_TIMEOUT_S = 60.0
"""A session ends after this long without a live message from its device; a device without one is forgotten."""
DEFAULT_DEVICE_MESSAGES_PER_S = 250.0
"""Inbound messages per device per second: 100 frames of 10 ms, with room for control messages."""
DEFAULT_DEVICE_BURST_MESSAGES = 1500
"""Inbound messages a device may send at once: 10 s of 10 ms frames held through an outage, and more."""
MAX_TOKEN_FILE_BYTES = 4 * 1024 * 1024
"""Largest --device-tokens file: about 20,000 devices with long tokens."""

K = TypeVar("K")
V = TypeVar("V")


class TokenBucket:
    """At most ``rate_per_s`` on average, with bursts of up to ``burst``: a device's inbound budget.

    A burst as large as a device's outage buffer lets its held frames through after a broker restart.
    """

    def __init__(self, rate_per_s: float, burst: int, now_s: float) -> None:
        if not rate_per_s > 0 or burst < 1:
            raise ValueError(f"a rate limit needs a positive rate and burst, got {rate_per_s}, {burst}")
        self.rate_per_s, self.burst = rate_per_s, float(burst)
        self.tokens = self.burst
        self.updated_s = now_s

    def take(self, now_s: float) -> bool:
        """Spend one token if there is one; False means the message is over the limit."""
        elapsed_s = max(0.0, now_s - self.updated_s)
        self.tokens = min(self.burst, self.tokens + elapsed_s * self.rate_per_s)
        self.updated_s = now_s
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class BoundedTable(Generic[K, V]):
    """A mapping that forgets its oldest entry past ``max_items``: memory a stranger cannot grow."""

    def __init__(self, max_items: int) -> None:
        self.max_items = max_items
        self._items: OrderedDict[K, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)

    def pop(self, key: K) -> V | None:
        return self._items.pop(key, None)


def token_matches(tokens: Mapping[str, str] | None, device_id: str, given: str | None) -> bool:
    """Whether a config may declare ``device_id``: always without tokens, else only with its own token
    (compared in constant time; a device the table does not name has none)."""
    if tokens is None:
        return True
    expected = tokens.get(device_id)
    if expected is None or given is None:
        return False
    # surrogatepass: JSON can carry a lone surrogate ("\\ud800"), which plain UTF-8 refuses to encode
    return hmac.compare_digest(expected.encode("utf-8", "surrogatepass"), given.encode("utf-8", "surrogatepass"))


def load_device_tokens(path: Path) -> dict[str, str]:
    """A ``--device-tokens`` file: a JSON object of device id to token; raises ValueError in one line."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"--device-tokens {str(path)!r} cannot be read: {exc.strerror or exc}") from None
    try:
        table = load_json(data, f"--device-tokens {str(path)!r}", MAX_TOKEN_FILE_BYTES)
    except UntrustedInputError as exc:
        raise ValueError(str(exc)) from None
    if not isinstance(table, dict) or not table:
        raise ValueError(f'--device-tokens {str(path)!r} must be a JSON object such as {{"robot1": "a-long-secret"}}')
    tokens: dict[str, str] = {}
    for device_id, token in table.items():
        if not valid_device_id(device_id):
            raise ValueError(f"--device-tokens {str(path)!r}: {device_id[:80]!r} is not a valid device id")
        try:
            tokens[device_id] = bounded_text(token, f"the token of {device_id!r}", MAX_TOKEN_CHARS)
        except UntrustedInputError as exc:
            raise ValueError(f"--device-tokens {str(path)!r}: {exc}") from None
        if not token.strip():
            raise ValueError(f"--device-tokens {str(path)!r}: the token of {device_id!r} is empty")
    return tokens
