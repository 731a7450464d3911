"""Short-lived TURN credentials from a shared secret (the TURN REST API of coturn's ``use-auth-secret``).

With a secret shared between the server and the TURN server, the server hands each caller a
user name that carries its own expiry and a password derived from it, so a leaked pair stops
working after ``ttl_s``, and the long-lived secret never reaches a browser.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

TURN_TTL_S = 3600
"""How long a handed-out TURN credential stays valid."""
TURN_USER = "duplexer"


def turn_rest_credentials(secret: str, now_s: float, ttl_s: int = TURN_TTL_S, user: str = TURN_USER) -> tuple[str, str]:
    """``(username, password)``: username ``"<expiry unix seconds>:<user>"``, password
    ``base64(HMAC-SHA1(secret, username))``, as TURN servers with a shared secret check them."""
    username = f"{int(now_s) + ttl_s}:{user}"
    digest = hmac.new(secret.encode("utf-8"), username.encode("utf-8"), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii")
