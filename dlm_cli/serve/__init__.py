"""``dlm serve``: an OpenAI-compatible HTTP server over the decoder's event stream, and a browser view of it.

:mod:`.engine` decodes (one worker thread, a bounded queue), :mod:`.schema` maps OpenAI's
request and response shapes, :mod:`.app` holds the Starlette routes and ``page.html`` the view.
This module only checks the command's options, binds the port, loads the model and runs uvicorn.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Any, Callable, Optional

from rich.console import Console

from ..errors import DlmError, UsageError


@dataclass
class ServeRequest:
    model: Optional[str]
    draft: Optional[str]
    profile: Optional[str]
    host: str
    port: int
    api_key: Optional[str]
    queue_size: int
    load: Any
    allow_different_tokenizers: bool = False
    max_batch: int = 1  # requests decoded together (dlm_cli.decode.batch); 1: one at a time


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_access(host: str, api_key: Optional[str]) -> None:
    """Only loopback may go without an API key."""
    if api_key is not None and not api_key.strip():
        raise UsageError("--api-key is empty; give a key (clients send it as 'Authorization: Bearer KEY'), or "
                         "drop --api-key on a loopback --host")
    if not is_loopback(host) and api_key is None:
        raise UsageError(f"--host {host} is not a loopback address, so anyone who reaches it could use the model; "
                         "pass --api-key KEY (or set DLM_API_KEY), which clients then send as a bearer token")


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the model loads so a taken port fails at once."""
    try:
        family = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as exc:
        raise UsageError(f"--host {host} cannot be resolved ({exc.strerror}); give an IP address or a known "
                         "host name") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        hint = "pick another --port, or stop what listens there" if exc.errno in (98, 48) else \
            "pick another --host or --port"
        raise DlmError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; {hint}") from None
    return sock


def run_serve(req: ServeRequest, *, load_model: Callable[[Optional[str], str], Any]) -> None:
    try:
        import uvicorn

        from .app import LOOPBACK_NAMES, create_app
    except ImportError as exc:
        raise DlmError(f"dlm serve needs the 'serve' extra ({exc.name} is missing): pip install 'dlm-cli[serve]'") \
            from None
    from ..session import RunRequest, check_early, open_session
    from .engine import Engine

    check_access(req.host, req.api_key)
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    run_req = RunRequest(req.model, req.draft, req.profile, allow_different_tokenizers=req.allow_different_tokenizers,
                         front="serve")
    early = check_early(run_req)
    sock = bind(req.host, req.port)
    try:
        session = open_session(run_req, load_model, early=early)
        model, draft, profile = session.model, session.draft, session.profile
        model_spec = req.model or (early.meta.get("model") if early is not None else None)
        engine = Engine(session, queue_size=req.queue_size, model_spec=model_spec, max_batch=req.max_batch)
        if engine.note:
            from ..errors import note

            note(engine.note)
        loopback = is_loopback(req.host)
        hosts = sorted({*LOOPBACK_NAMES, req.host.strip("[]")}) if loopback else None
        app = create_app(engine, api_key=req.api_key, hosts=hosts)
        config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=3)
        sock.listen(2048)  # from here a client waits in the backlog until uvicorn accepts it
        shown = f"[{req.host}]" if ":" in req.host else req.host
        port = sock.getsockname()[1]
        draft_note = f", draft {draft.info.name}" if draft is not None else ""
        err.print(f"dlm serve: {model.info.name} (profile {profile}{draft_note}) on http://{shown}:{port}/ "
                  f"(the browser view; OpenAI API under /v1) · batch size {engine.max_batch}, queue {req.queue_size}"
                  f"{' · API key required' if req.api_key else ''} · Ctrl-C stops", markup=False)
        server = uvicorn.Server(config)
        server.run(sockets=[sock])
        if server.should_exit:
            # uvicorn stopped on a signal and raised it again under the handler it found; with SIGINT
            # ignored (a background job of a script) that raise did nothing: end with its code anyway.
            import signal

            from ..errors import INTERRUPTED, TERMINATED, Interrupted

            caught = list(getattr(server, "_captured_signals", None) or [])
            raise Interrupted(TERMINATED if caught and caught[-1] == signal.SIGTERM else INTERRUPTED)
    finally:
        sock.close()
