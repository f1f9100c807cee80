"""The merchant portal: Starlette routes over the shared query layer, tickets and mail.

Read-only by construction: payment data is read through `reader`, a pool whose sessions
run with `default_transaction_read_only=on` (and, when `portal.read_dsn` is set, as a role
that may only SELECT); the only writes — passwords, last log-in, used links, audit rows —
go through `accounts`, on the other pool. Every query passes the user's id, so the query
layer's scope clause decides what exists for that user: an id outside the scope is "not
found", exactly like an id that does not exist.

Database work is synchronous psycopg run in Starlette's thread pool: the query layer's
single-row reads and exports are synchronous, and one kind of connection keeps one pool.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from psycopg_pool import ConnectionPool
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from passerelle.mail import MailError, parse_recipients, send_ticket
from passerelle.portal import forms
from passerelle.portal.accounts import Accounts, User
from passerelle.portal.export import stream_csv
from passerelle.portal.icons import icon_png
from passerelle.portal.security import PortalMiddleware, Session, SessionCodec
from passerelle.portal.settings import Config
from passerelle.storage import queries
from passerelle.storage.db import DatabaseUnavailable, StorageError
from passerelle.storage.filters import FilterError, TransactionFilters
from passerelle.tickets import PARIS, money, render_payment, render_remise

HERE = Path(__file__).parent
MAX_ID = 2**63 - 1
# Planner cost of a random page read for the portal's searches. PostgreSQL's default (4)
# models spinning disks: with it, a merchant's totals over a month walk the whole fleet's
# month through the time index (its pages in order look cheap) instead of the merchant's
# rows through the (contract_id, time) index, 5 to 10 times slower on the benchmark's
# 10 million rows (benchmarks/portal.py). The searched months live in memory or on SSD,
# where 1.1 is the usual figure; set for the portal's read sessions only.
READ_RANDOM_PAGE_COST = 1.1
ICON_SIZES = (180, 192, 512)
Handler = Callable[[Request], Awaitable[Response]]


def _paris(at: datetime | None, fmt: str = "%d/%m/%Y %H:%M") -> str:
    return at.astimezone(PARIS).strftime(fmt) if at else ""


class Portal:
    """What the handlers share: configuration, pools, templates."""

    def __init__(self, config: Config) -> None:
        self.config = config
        storage = config.storage
        options = f"-c statement_timeout={storage.statement_timeout_ms}"
        common = {"min_size": 1, "max_size": max(2, storage.pool_max_size),
                  "timeout": storage.connect_timeout_s, "open": False}
        self.reader = ConnectionPool(
            config.read_dsn, name="portal-read", **common,  # type: ignore[arg-type]
            kwargs={"options": f"{options} -c default_transaction_read_only=on"
                               f" -c random_page_cost={READ_RANDOM_PAGE_COST}",
                    "connect_timeout": max(1, round(storage.connect_timeout_s))})
        self.writer = ConnectionPool(
            config.dsn, name="portal-write", min_size=1, max_size=4,
            timeout=storage.connect_timeout_s, open=False,
            kwargs={"options": options,
                    "connect_timeout": max(1, round(storage.connect_timeout_s))})
        self.accounts = Accounts(self.writer, failures=config.portal.lockout_failures,
                                 minutes=config.portal.lockout_minutes)
        self.templates = Jinja2Templates(directory=HERE / "templates")
        env = self.templates.env
        env.filters["money"] = money
        env.filters["paris"] = _paris
        env.globals["brand"] = config.branding
        env.globals["look"] = config.portal
        env.globals["has_logo"] = config.logo is not None
        env.globals["query"] = forms.query_string

    # --- rendering and guards ----------------------------------------------------------------

    def render(self, request: Request, name: str, context: dict[str, Any],
               status: int = 200) -> Response:
        session: Session = request.scope["session"]
        context = {"csrf": session.csrf, "user": request.scope.get("user"), **context}
        return self.templates.TemplateResponse(request, name, context, status_code=status)

    async def user(self, request: Request) -> User | None:
        session: Session = request.scope["session"]
        if session.user_id is None:
            return None
        user = await run_in_threadpool(self.accounts.user, session.user_id)
        if user is None or user.fingerprint != session.fingerprint:
            session.logout()  # disabled, or the password changed since this session began
            session.expired = True
            return None
        request.scope["user"] = user
        return user

    def login_required(self, handler: Callable[[Request, User], Awaitable[Response]]) -> Handler:
        async def guarded(request: Request) -> Response:
            user = await self.user(request)
            if user is None:
                session: Session = request.scope["session"]
                target = request.url.path + (f"?{request.url.query}" if request.url.query
                                             else "")
                params = f"?next={quote(target, safe='')}"
                if session.expired:
                    params += "&expired=1"
                return RedirectResponse(f"/login{params}", status_code=303)
            return await handler(request, user)

        return guarded

    async def form(self, request: Request) -> dict[str, str]:
        """A POSTed form whose CSRF token matches the session's, else 403."""
        data = await request.form(max_files=0, max_fields=50)
        session: Session = request.scope["session"]
        if not session.check_csrf(data.get("csrf")):
            raise HTTPException(403, "Formulaire expiré ou invalide : rechargez la page.")
        return {k: v for k, v in data.items() if isinstance(v, str)}

    @staticmethod
    def ip(request: Request) -> str | None:
        return request.client.host if request.client else None

    # --- database work (in the thread pool) --------------------------------------------------

    def _search(self, form: forms.SearchForm, user_id: int, by_issuer: bool) -> dict[str, Any]:
        with self.reader.connection() as conn:
            page = queries.search(conn, form.filters, user_id=user_id, sort=form.sort,
                                  descending=form.descending, limit=form.limit,
                                  cursor=form.cursor)
            totals = queries.totals(conn, form.filters, user_id=user_id)
            issuers = (queries.totals(conn, form.filters, user_id=user_id, group_by="issuer")
                       if by_issuer else [])
        return {"page": page, "totals": totals, "issuers": issuers}

    def _remise(self, remise_id: int, user_id: int) -> dict[str, Any] | None:
        with self.reader.connection() as conn:
            remise = queries.get_remise(conn, remise_id, user_id)
            if remise is None:
                return None
            filters = TransactionFilters(remise_id=remise_id)
            payments = queries.search(conn, filters, user_id=user_id, sort="date",
                                      descending=False, limit=queries.MAX_PAGE_SIZE)
            city = queries.contract_city(conn, remise.contract_id)
        return {"remise": remise, "payments": payments,
                "ticket": render_remise(remise, city=city)}

    def _payment(self, payment_id: int, user_id: int, copy: str) -> dict[str, Any] | None:
        with self.reader.connection() as conn:
            payment = queries.get_transaction(conn, payment_id, user_id)
            if payment is None:
                return None
            city = queries.contract_city(conn, payment.contract_id)
        return {"payment": payment, "copy": copy,
                "ticket": render_payment(payment, city=city, copy=copy)}  # type: ignore[arg-type]


def _row_id(request: Request) -> int:
    value = request.path_params["id"]
    if not 0 < value <= MAX_ID:
        raise HTTPException(404, "Introuvable.")
    return value


def _safe_next(target: str | None) -> str:
    """Only a path of this site: never an open redirect."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/remises"


def create_app(config: Config) -> Starlette:
    """The ASGI application of one deployment."""
    portal = Portal(config)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        portal.reader.open(wait=False)
        portal.writer.open(wait=False)
        try:
            yield
        finally:
            await run_in_threadpool(portal.reader.close)
            await run_in_threadpool(portal.writer.close)

    # --- log-in, log-out, password link --------------------------------------------------------

    async def login(request: Request) -> Response:
        session: Session = request.scope["session"]
        target = _safe_next(request.query_params.get("next"))
        context: dict[str, Any] = {"next": target, "email": "", "error": None,
                                   "notice": None}
        if request.query_params.get("expired"):
            context["notice"] = "Votre session a expiré : reconnectez-vous."
        if request.method == "GET":
            if await portal.user(request):
                return RedirectResponse(target, status_code=303)
            return portal.render(request, "login.html", context)
        data = await portal.form(request)
        email, password = data.get("email", "")[:254], data.get("password", "")[:1024]
        context["email"] = email
        if not email or not password:
            context["error"] = "Saisissez votre adresse e-mail et votre mot de passe."
            return portal.render(request, "login.html", context, 400)
        result = await run_in_threadpool(portal.accounts.login, email, password,
                                         portal.ip(request))
        if result.user is None:
            context["error"] = (
                f"Trop d'essais infructueux : connexion bloquée pendant "
                f"{config.portal.lockout_minutes} minutes." if result.locked
                else "Adresse e-mail ou mot de passe incorrect.")
            return portal.render(request, "login.html", context, 429 if result.locked else 401)
        session.login(result.user.id, result.user.fingerprint)
        return RedirectResponse(target, status_code=303)

    async def logout(request: Request) -> Response:
        await portal.form(request)
        user = await portal.user(request)
        if user is not None:
            await run_in_threadpool(portal.accounts.logout, user, portal.ip(request))
        request.scope["session"].logout()
        return RedirectResponse("/login", status_code=303)

    async def password(request: Request) -> Response:
        token = request.path_params["token"][:128]
        state = await run_in_threadpool(portal.accounts.token, token)
        context: dict[str, Any] = {"state": state, "error": None,
                                   "min_length": config.portal.min_password_length}
        if state.status != "ok" or request.method == "GET":
            return portal.render(request, "password.html", context,
                                 200 if state.status == "ok" else 410)
        data = await portal.form(request)
        new, again = data.get("password", "")[:1024], data.get("confirm", "")[:1024]
        if len(new) < config.portal.min_password_length:
            context["error"] = (f"Au moins {config.portal.min_password_length} caractères.")
        elif new != again:
            context["error"] = "Les deux saisies sont différentes."
        elif new.strip().lower() == (state.email or "").lower():
            context["error"] = "Le mot de passe ne peut pas être votre adresse e-mail."
        if context["error"]:
            return portal.render(request, "password.html", context, 400)
        done = await run_in_threadpool(portal.accounts.set_password, token, new,
                                       portal.ip(request))
        if done.status != "ok":  # used meanwhile in another tab
            return portal.render(request, "password.html", {**context, "state": done}, 410)
        user = await run_in_threadpool(portal.accounts.user, done.user_id)
        if user is not None:
            request.scope["session"].login(user.id, user.fingerprint)
        return RedirectResponse("/remises?welcome=1", status_code=303)

    # --- searches ------------------------------------------------------------------------------

    async def listing(request: Request, user: User, kind: str, export: bool = False) -> Response:
        remises = kind == "remises"
        form = forms.parse_search(request.query_params, kind, config.pan_keys,
                                  default_days=31 if remises else 7)
        if export:
            forms.check_export(form)
        context: dict[str, Any] = {"form": form, "kind": kind, "result": None,
                                   "main": forms.REMISE_MAIN if remises
                                   else forms.TRANSACTION_MAIN,
                                   "more": forms.REMISE_MORE if remises
                                   else forms.TRANSACTION_MORE,
                                   "sorts": SORT_LABELS[kind], "page_sizes": forms.PAGE_SIZES,
                                   "welcome": request.query_params.get("welcome")}
        if form.errors:
            return portal.render(request, "search.html", context, 400)
        if export:
            return await export_csv(request, user, kind, form)
        by_issuer = not remises and (form.filters.application == forms.MEAL_VOUCHER
                                     or form.filters.issuer is not None)
        try:
            context["result"] = await run_in_threadpool(portal._search, form, user.id,
                                                        by_issuer)
        except FilterError as exc:  # a cursor from another search, edited by hand
            form.errors[exc.field] = forms.reason(exc)
            return portal.render(request, "search.html", context, 400)
        return portal.render(request, "search.html", context)

    async def export_csv(request: Request, user: User, kind: str,
                         form: forms.SearchForm) -> Response:
        filters = form.filters
        await run_in_threadpool(portal.accounts.record, user, "export", kind,
                                {"from": filters.date_from.isoformat(),
                                 "to": filters.date_to.isoformat()}, portal.ip(request))
        name = f"{kind}-{filters.date_from.isoformat()}-{filters.date_to.isoformat()}.csv"
        return StreamingResponse(
            stream_csv(portal.reader, kind, filters, user.id),
            media_type="text/csv; charset=utf-8",
            headers={"content-disposition": f'attachment; filename="{name}"'})

    async def remises(request: Request, user: User) -> Response:
        return await listing(request, user, "remises")

    async def payments(request: Request, user: User) -> Response:
        return await listing(request, user, "transactions")

    async def export_remises(request: Request, user: User) -> Response:
        return await listing(request, user, "remises", export=True)

    async def export_payments(request: Request, user: User) -> Response:
        return await listing(request, user, "transactions", export=True)

    # --- one remise, one payment, their tickets ----------------------------------------------

    async def remise(request: Request, user: User, mail: dict[str, Any] | None = None,
                     status: int = 200) -> Response:
        found = await run_in_threadpool(portal._remise, _row_id(request), user.id)
        if found is None:
            raise HTTPException(404, "Cette remise n'existe pas ou ne vous est pas accessible.")
        return portal.render(request, "remise.html", {**found, "mail": mail or {}}, status)

    async def payment(request: Request, user: User, mail: dict[str, Any] | None = None,
                      status: int = 200, copy: str | None = None) -> Response:
        copy = copy or ("merchant" if request.query_params.get("copy") == "merchant"
                        else "client")
        found = await run_in_threadpool(portal._payment, _row_id(request), user.id, copy)
        if found is None:
            raise HTTPException(404, "Ce paiement n'existe pas ou ne vous est pas accessible.")
        return portal.render(request, "payment.html", {**found, "mail": mail or {}}, status)

    async def mail_ticket(request: Request, user: User, kind: str) -> Response:
        data = await portal.form(request)
        row_id = _row_id(request)
        copy = "merchant" if data.get("copy") == "merchant" else "client"
        # Read (and scope-check) first: an out-of-scope id is a 404, never a mail.
        found = await run_in_threadpool(
            portal._remise if kind == "remise" else portal._payment, row_id, user.id,
            *(() if kind == "remise" else (copy,)))
        if found is None:
            raise HTTPException(404, "Introuvable, ou pas accessible avec votre compte.")
        show = remise if kind == "remise" else payment
        extra = {} if kind == "remise" else {"copy": copy}
        text = data.get("recipients", "")[:1000]
        try:
            recipients = parse_recipients(text, option="Adresses")
        except MailError as exc:
            return await show(request, user, {"error": str(exc), "recipients": text}, 400,
                              **extra)
        if kind == "remise":
            row = found["remise"]
            subject = (f"Ticket de télécollecte du {_paris(row.collected_at, '%d/%m/%Y')}, "
                       f"remise {row.remise_number}")
        else:
            subject = f"Ticket de paiement du {_paris(found['payment'].tx_at, '%d/%m/%Y')}"
        delivery = await run_in_threadpool(send_ticket, config.mail, config.branding,
                                           recipients, subject, found["ticket"])
        await run_in_threadpool(portal.accounts.record, user, "ticket.mail",
                                f"{kind} {row_id}", {"recipients": len(recipients),
                                                     "accepted": len(delivery.accepted)},
                                portal.ip(request))
        result = {"accepted": delivery.accepted, "refused": delivery.refused,
                  "error": None if delivery.ok else (delivery.error or "envoi refusé"),
                  "recipients": "" if delivery.ok else text}
        return await show(request, user, result, 200 if delivery.ok else 502, **extra)

    async def mail_remise(request: Request, user: User) -> Response:
        return await mail_ticket(request, user, "remise")

    async def mail_payment(request: Request, user: User) -> Response:
        return await mail_ticket(request, user, "payment")

    # --- white-label assets ----------------------------------------------------------------------

    async def manifest(_request: Request) -> Response:
        brand = config.branding
        body = {"name": brand.name, "short_name": brand.name[:12], "start_url": "/remises",
                "scope": "/", "display": "standalone", "lang": "fr",
                "background_color": "#ffffff", "theme_color": config.portal.primary_color,
                "icons": [{"src": f"/icons/{s}.png", "sizes": f"{s}x{s}", "type": "image/png",
                           "purpose": "any"} for s in (192, 512)]}
        return Response(json.dumps(body), media_type="application/manifest+json",
                        headers={"cache-control": "public, max-age=3600"})

    async def icon(request: Request) -> Response:
        size = request.path_params["size"]
        if size not in ICON_SIZES:
            raise HTTPException(404, "Introuvable.")
        png = icon_png(size, config.portal.primary_color)
        return Response(png, media_type="image/png",
                        headers={"cache-control": "public, max-age=86400"})

    async def brand_css(_request: Request) -> Response:
        look = config.portal
        css = f":root {{ --primary: {look.primary_color}; --accent: {look.accent_color}; }}\n"
        return Response(css, media_type="text/css",
                        headers={"cache-control": "public, max-age=3600"})

    async def logo(_request: Request) -> Response:
        if config.logo is None:
            raise HTTPException(404, "Introuvable.")
        content, media_type = config.logo
        headers = {"cache-control": "public, max-age=86400"}
        if media_type == "image/svg+xml":  # an SVG opened directly must not run scripts
            headers["content-security-policy"] = "default-src 'none'; style-src 'unsafe-inline'"
        return Response(content, media_type=media_type, headers=headers)

    async def home(_request: Request) -> Response:
        return RedirectResponse("/remises", status_code=303)

    # --- errors ----------------------------------------------------------------------------------

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        message = exc.detail if exc.status_code in (403, 404, 410) else {
            405: "Méthode non permise.", 400: "Requête invalide.",
        }.get(exc.status_code, exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = "Cette page n'existe pas."
        return portal.render(request, "error.html", {"message": message}, exc.status_code)

    async def storage_error(request: Request, exc: Exception) -> Response:
        unavailable = isinstance(exc, DatabaseUnavailable)
        message = ("Le service est momentanément indisponible, réessayez dans un instant."
                   if unavailable else "Une erreur est survenue ; elle a été signalée.")
        return portal.render(request, "error.html", {"message": message},
                             503 if unavailable else 500)

    def guarded(handler: Callable[[Request, User], Awaitable[Response]]) -> Handler:
        return portal.login_required(handler)

    routes = [
        Route("/", home),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/password/{token:str}", password, methods=["GET", "POST"]),
        Route("/remises", guarded(remises)),
        Route("/remises/{id:int}", guarded(remise)),
        Route("/remises/{id:int}/mail", guarded(mail_remise), methods=["POST"]),
        Route("/paiements", guarded(payments)),
        Route("/paiements/{id:int}", guarded(payment)),
        Route("/paiements/{id:int}/mail", guarded(mail_payment), methods=["POST"]),
        Route("/export/remises", guarded(export_remises)),
        Route("/export/paiements", guarded(export_payments)),
        Route("/manifest.webmanifest", manifest),
        Route("/icons/{size:int}.png", icon),
        Route("/brand.css", brand_css),
        Route("/logo", logo),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: http_error,
                                        StorageError: storage_error})
    app.state.portal = portal
    codec = SessionCodec(config.secret, config.portal.session_idle_minutes * 60,
                         config.portal.session_hours * 3600)
    return PortalMiddleware(app, codec, secure=config.portal.cookie_secure,  # type: ignore[return-value]
                            same_site=config.portal.same_site)


SORT_LABELS = {
    "remises": (("date", "Date"), ("amount", "Montant net"),
                ("transaction_count", "Nb de transactions"), ("remise_number", "N° de remise"),
                ("contract_number", "Contrat"), ("terminal_serial", "Terminal"),
                ("application", "Application")),
    "transactions": (("date", "Date"), ("amount", "Montant"), ("remise_number", "N° de remise"),
                     ("contract_number", "Contrat"), ("terminal_serial", "Terminal"),
                     ("application", "Application"), ("response_code", "Code réponse")),
}
