"""Who may see the staff pages: OIDC through ``st.login``, else staff passwords, else nobody.

- ``[auth]`` in Streamlit's secrets: ``st.login`` with that OpenID Connect provider; the
  ``[access]`` table maps verified e-mail addresses to roles
  (``staff = ["alice@shop.example"]``, ``analyst = [...]``, ``admin = [...]``).
- Otherwise accounts from the secrets' ``[users.<name>]`` tables or ``SHOPASSIST_USERS``
  (see :mod:`ui.passwords`), with a login form on the page.
- Neither configured: Support and Insights refuse, with the instructions. They are never
  open by default.

Roles: ``staff`` sees Support, ``analyst`` sees Insights, ``admin`` both.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import streamlit as st

from ui.passwords import ROLES, Throttle, User, authenticate, load_users

logger = logging.getLogger(__name__)

PAGE_ROLES: dict[str, tuple[str, ...]] = {"support": ("staff", "admin"),
                                          "insights": ("analyst", "admin")}
PAGE_TITLES = {"support": "Support", "insights": "Insights"}
SESSION_KEY = "shopassist_identity"
SETUP_HELP = """\
**Staff pages need a login, and none is configured.**

Either configure an OpenID Connect provider (`[auth]` and `[access]` in
`.streamlit/secrets.toml`), or create a password hash:

```
shopassist users hash-password
```

and add the account to `.streamlit/secrets.toml`:

```toml
[users.alice]
password_hash = "scrypt$32768$8$1$..."
role = "staff"        # staff: Support, analyst: Insights, admin: both
```

or to the environment: `SHOPASSIST_USERS='{"alice": {"password_hash": "scrypt$...", \
"role": "staff"}}'`. See README, "The app".
"""


@dataclass(frozen=True)
class Identity:
    """A logged-in staff member.

    Attributes:
        name: Login name or e-mail address.
        role: ``staff``, ``analyst`` or ``admin``.
        method: ``oidc`` or ``password``.
    """

    name: str
    role: str
    method: str


def allowed(role: str | None, page: str) -> bool:
    """Whether ``role`` may open ``page`` (``support`` or ``insights``)."""
    return role is not None and role in PAGE_ROLES.get(page, ())


def visible_pages(role: str | None) -> list[str]:
    """The pages to list in the navigation: Shop always; a staff page unless the user is
    logged in with a role that cannot open it (logged out, each page offers its login)."""
    return ["shop", *(p for p in PAGE_ROLES if role is None or allowed(role, p))]


def oidc_role(claims: Mapping[str, Any], access: Mapping[str, Any]) -> str | None:
    """The role of an OIDC user: the ``[access]`` list that names their verified e-mail.

    Args:
        claims: ``st.user`` as a dict (``email``, ``email_verified``...).
        access: The ``[access]`` secrets table: role -> list of e-mail addresses.

    Returns:
        The most powerful matching role, or ``None`` (no access).
    """
    email = str(claims.get("email") or "").strip().lower()
    if not email or claims.get("email_verified") is False:
        return None
    for role in ("admin", "analyst", "staff"):
        listed = access.get(role) or []
        if isinstance(listed, str):
            listed = [listed]
        if email in {str(e).strip().lower() for e in listed}:
            return role
    return None


def secrets() -> Mapping[str, Any]:
    """Streamlit's secrets as a mapping ({} when there is no secrets file)."""
    try:
        return st.secrets.to_dict()
    except FileNotFoundError:  # StreamlitSecretNotFoundError: no secrets.toml anywhere
        return {}


def auth_mode(conf: Mapping[str, Any], users: Mapping[str, User]) -> str | None:
    """``oidc`` when ``[auth]`` is configured, else ``password`` when accounts exist."""
    if conf.get("auth"):
        return "oidc"
    return "password" if users else None


@st.cache_resource
def _throttle() -> Throttle:
    return Throttle()


def current_identity() -> Identity | None:
    """The staff member of this browser session, if logged in."""
    conf = secrets()
    if conf.get("auth"):
        if not st.user.is_logged_in:
            return None
        claims = st.user.to_dict()
        role = oidc_role(claims, conf.get("access") or {})
        name = str(claims.get("email") or claims.get("name") or "?")
        return Identity(name, role, "oidc") if role in ROLES else \
            Identity(name, "none", "oidc")
    found = st.session_state.get(SESSION_KEY)
    return found if isinstance(found, Identity) else None


def require(page: str) -> Identity:
    """Renders the login (or the refusal) and stops the page unless the session's user
    may open ``page``.

    Returns:
        The identity of the allowed user.
    """
    conf = secrets()
    try:
        users = load_users(conf.get("users"))
    except ValueError as exc:
        st.error(f"The staff accounts are misconfigured: {exc}")
        st.stop()
    mode = auth_mode(conf, users)
    title = PAGE_TITLES.get(page, page)
    if mode is None:
        st.title(title)
        st.warning(SETUP_HELP)
        st.stop()
    identity = current_identity()
    if identity is None:
        st.title(title)
        if mode == "oidc":
            _oidc_login()
        else:
            _password_form(users)
        st.stop()
    if not allowed(identity.role, page):
        st.title(title)
        needed = " or ".join(PAGE_ROLES[page])
        st.error(f"You are logged in as {identity.name} (role: {identity.role}); this page "
                 f"needs the role {needed}.")
        logout_button()
        st.stop()
    return identity


def _oidc_login() -> None:
    st.info("Log in with your company account to continue.")
    if st.button("Log in", type="primary"):
        try:
            st.login()
        except Exception as exc:  # Authlib missing or the provider settings are invalid
            logger.warning("OIDC login failed: %s", exc)
            st.error(f"Login is configured but could not start: {exc}. Install Authlib "
                     "(`pip install 'streamlit[auth]'`) and check the [auth] secrets.")


def _password_form(users: Mapping[str, User]) -> None:
    throttle = _throttle()
    with st.form("login"):
        name = st.text_input("User name")
        password = st.text_input("Password", type="password")
        submitted = st.form_submit_button("Log in", type="primary")
    if not submitted:
        return
    session_key = "session:" + st.session_state.setdefault("_login_session", uuid.uuid4().hex)
    wait = max(throttle.wait_left(f"user:{name.strip()}"), throttle.wait_left(session_key))
    if wait > 0:
        st.error(f"Too many failed attempts. Try again in {wait:.0f} s.")
        return
    user = authenticate(users, name, password)
    if user is None:
        throttle.failed(f"user:{name.strip()}")
        throttle.failed(session_key)
        logger.warning("failed staff login")
        st.error("Wrong user name or password.")
        return
    throttle.succeeded(f"user:{user.name}")
    throttle.succeeded(session_key)
    st.session_state[SESSION_KEY] = Identity(user.name, user.role, "password")
    st.rerun()


def logout_button() -> None:
    """A log-out button (OIDC: ``st.logout``; passwords: forget the session's login)."""
    identity = current_identity()
    if identity is None:
        return
    if st.button("Log out", key="logout"):
        st.session_state.pop(SESSION_KEY, None)
        if identity.method == "oidc":
            st.logout()
        st.rerun()
