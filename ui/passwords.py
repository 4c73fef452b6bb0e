"""Staff accounts without an identity provider: scrypt password hashes, users, throttling.

Used when no OIDC provider is configured (``[auth]`` in Streamlit's secrets). Accounts come
from the ``[users.<name>]`` tables of the secrets or from the ``SHOPASSIST_USERS``
environment variable (JSON), each with a ``password_hash`` made by
``shopassist users hash-password`` and a ``role``. Hashes use only the standard library:
``scrypt$<n>$<r>$<p>$<salt, base64>$<hash, base64>``.

Nothing here imports Streamlit, so the CLI and the tests use it as is.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

SCHEME = "scrypt"
# n=2**15, r=8 costs ~32 MiB and ~0.1 s per check: slow for a guesser, fine for a login.
DEFAULT_N = 2**15
DEFAULT_R = 8
DEFAULT_P = 1
# A stored hash names its own cost; these bounds stop a hostile config from asking for
# gigabytes of memory per login.
MAX_N = 2**20
MAX_R = 32
MAX_P = 16
SALT_BYTES = 16
KEY_BYTES = 32
ROLES = ("staff", "analyst", "admin")
USERS_ENV = "SHOPASSIST_USERS"


class PasswordHashError(ValueError):
    """A stored password hash that cannot be used; the message says what is expected."""


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    # maxmem: scrypt needs 128 * n * r bytes (plus slack); the default 32 MiB cap is too low.
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p,
                          dklen=KEY_BYTES, maxmem=256 * n * r + 1024 * 1024)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str, *, n: int = DEFAULT_N, r: int = DEFAULT_R,
                  p: int = DEFAULT_P) -> str:
    """Hashes a password with scrypt and a random salt.

    Args:
        password: The password (at least 8 characters).
        n: CPU/memory cost, a power of two.
        r: Block size.
        p: Parallelism.

    Returns:
        ``scrypt$n$r$p$salt$hash`` (salt and hash in base64).

    Raises:
        ValueError: The password is shorter than 8 characters, or the cost is out of range.
    """
    if len(password) < 8:
        raise ValueError("Use a password of at least 8 characters.")
    _check_cost(n, r, p)
    salt = secrets.token_bytes(SALT_BYTES)
    return f"{SCHEME}${n}${r}${p}${_b64(salt)}${_b64(_scrypt(password, salt, n, r, p))}"


def _check_cost(n: int, r: int, p: int) -> None:
    if n < 2 or n & (n - 1) or n > MAX_N or not 1 <= r <= MAX_R or not 1 <= p <= MAX_P:
        raise PasswordHashError(
            f"scrypt cost n={n}, r={r}, p={p} is out of range: n must be a power of two up "
            f"to {MAX_N}, r 1..{MAX_R}, p 1..{MAX_P}.")


def parse_hash(stored: str) -> tuple[int, int, int, bytes, bytes]:
    """Reads ``scrypt$n$r$p$salt$hash``.

    Raises:
        PasswordHashError: Not in that form, or a cost out of range.
    """
    parts = str(stored).strip().split("$")
    if len(parts) != 6 or parts[0] != SCHEME:
        raise PasswordHashError("A password hash reads scrypt$n$r$p$salt$hash; make one with "
                                "`shopassist users hash-password`.")
    try:
        n, r, p = (int(x) for x in parts[1:4])
        salt = base64.b64decode(parts[4], validate=True)
        key = base64.b64decode(parts[5], validate=True)
    except ValueError:
        raise PasswordHashError("The password hash has a malformed number or base64 part; "
                                "make a new one with `shopassist users hash-password`.") from None
    _check_cost(n, r, p)
    if not salt or len(key) < 16:
        raise PasswordHashError("The password hash has an empty salt or a short key.")
    return n, r, p, salt, key


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored`` (constant-time comparison).

    A malformed ``stored`` hash never matches (and is logged without the hash).
    """
    try:
        n, r, p, salt, key = parse_hash(stored)
    except PasswordHashError as exc:
        logger.warning("unusable password hash: %s", exc)
        return False
    candidate = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p,
                               dklen=len(key), maxmem=256 * n * r + 1024 * 1024)
    return hmac.compare_digest(candidate, key)


# Checked against when the user name is unknown, so a wrong name costs the same time as a
# wrong password and the timing does not tell which names exist.
_DUMMY_HASH = (f"{SCHEME}${DEFAULT_N}${DEFAULT_R}${DEFAULT_P}${_b64(b'shopassist-dummy')}$"
               f"{_b64(bytes(KEY_BYTES))}")


@dataclass(frozen=True)
class User:
    """A staff account.

    Attributes:
        name: The login name.
        role: ``staff`` (Support), ``analyst`` (Insights) or ``admin`` (both).
        password_hash: ``scrypt$...`` (never shown).
    """

    name: str
    role: str
    password_hash: str = ""

    def __repr__(self) -> str:
        return f"User(name={self.name!r}, role={self.role!r})"


def parse_users(entries: Mapping[str, Any], where: str) -> dict[str, User]:
    """Reads ``{name: {"password_hash": ..., "role": ...}}``.

    Raises:
        ValueError: An entry without a hash, or with an unknown role.
    """
    users: dict[str, User] = {}
    for name, entry in entries.items():
        if not isinstance(entry, Mapping):
            raise ValueError(f"User {name!r} in {where} must be a table with password_hash "
                             "and role.")
        role = str(entry.get("role", "")).strip().lower()
        if role not in ROLES:
            raise ValueError(f"User {name!r} in {where} has role {entry.get('role')!r}; use "
                             f"one of {', '.join(ROLES)}.")
        stored = str(entry.get("password_hash", "")).strip()
        parse_hash(stored)  # a bad hash is a configuration error, said at start-up
        users[str(name)] = User(str(name), role, stored)
    return users


def load_users(secrets_users: Mapping[str, Any] | None,
               environ: Mapping[str, str] | None = None) -> dict[str, User]:
    """The configured accounts: the secrets' ``[users]`` tables, then ``SHOPASSIST_USERS``.

    Args:
        secrets_users: The ``users`` table of Streamlit's secrets (or ``None``).
        environ: The environment (default ``os.environ``).

    Returns:
        Accounts by name (the environment wins on a name in both).

    Raises:
        ValueError: Malformed JSON, a bad hash or an unknown role.
    """
    env = os.environ if environ is None else environ
    users = parse_users(dict(secrets_users or {}), "secrets [users]")
    raw = env.get(USERS_ENV, "").strip()
    if raw:
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{USERS_ENV} is not valid JSON ({exc.msg}); expected "
                             '{"name": {"password_hash": "scrypt$...", "role": "staff"}}.'
                             ) from None
        if not isinstance(data, dict):
            raise ValueError(f"{USERS_ENV} must be a JSON object of users.")
        users.update(parse_users(data, USERS_ENV))
    return users


def authenticate(users: Mapping[str, User], name: str, password: str) -> User | None:
    """The account when ``name`` and ``password`` match, else ``None``.

    Takes the same time whether or not the name exists.
    """
    user = users.get(name.strip())
    ok = verify_password(password, user.password_hash if user else _DUMMY_HASH)
    return user if (ok and user is not None) else None


class Throttle:
    """Slows down repeated failed logins: after ``free`` failures for a key, each further
    attempt must wait twice as long as the previous one (up to ``max_wait`` seconds).

    Keys are user names (and, by the caller, the session), so neither a new browser tab nor
    another name lifts the wait. Thread-safe; one instance per process.
    """

    def __init__(self, *, free: int = 3, base_wait: float = 1.0, max_wait: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.free = free
        self.base_wait = base_wait
        self.max_wait = max_wait
        self.clock = clock
        self._failures: dict[str, int] = {}
        self._until: dict[str, float] = {}
        self._lock = threading.Lock()

    def wait_left(self, key: str) -> float:
        """Seconds before ``key`` may try again (0 when it may now)."""
        with self._lock:
            return max(0.0, self._until.get(key, 0.0) - self.clock())

    def failed(self, key: str) -> float:
        """Records a failure; returns the wait now imposed on ``key``."""
        with self._lock:
            count = self._failures.get(key, 0) + 1
            self._failures[key] = count
            if count <= self.free:
                return 0.0
            wait = min(self.max_wait, self.base_wait * 2 ** (count - self.free - 1))
            self._until[key] = self.clock() + wait
            return wait

    def succeeded(self, key: str) -> None:
        """Forgets the failures of ``key``."""
        with self._lock:
            self._failures.pop(key, None)
            self._until.pop(key, None)
