"""`haexec plan create|list|show|cancel|explain` and `haexec news import`: plans and news in
PostgreSQL directly (the same decisions as /plans, haexec/plans_api.py), so they work with no
replica up."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from pathlib import Path
from typing import Any

from engine.plans import store
from engine.plans.news import NewsFileError, load
from engine.signal import MAX_BODY_BYTES, BodyTooLarge, DuplicateKey, loads
from haexec import plans_api
from haexec import settings as settings_mod
from haexec.cli_common import EXIT_CONFIG, CommandError, database_url, int_in, open_database

# What an answer's HTTP status means for the exit status: 4xx of the input is bad usage (2),
# a state that refuses it (409) or a plan that is not there (404) is a failure (1).
EXIT_BY_STATUS = {200: 0, 201: 0, 404: 1, 409: 1, 422: EXIT_CONFIG}
MAX_PLANS = 1000


def _read(source: str) -> bytes:
    if source == "-":
        return sys.stdin.buffer.read(MAX_BODY_BYTES + 1)
    try:
        with open(source, "rb") as f:
            return f.read(MAX_BODY_BYTES + 1)
    except OSError as exc:
        raise CommandError(f"{source}: {exc.strerror or exc}") from None


def _finish(answer: plans_api.Answer, as_json: bool, text: str) -> int:
    if as_json:
        print(json.dumps(answer.body, default=str))
    elif answer.status in (200, 201):
        print(text)
    code = EXIT_BY_STATUS.get(answer.status, 1)
    if code and not as_json:
        print(f"haexec plan: {_one_line(answer.body)}", file=sys.stderr)
    return code


def _one_line(body: dict[str, Any]) -> str:
    errors = body.get("errors")
    if isinstance(errors, dict):
        return f"{body['error']}: " + "; ".join(f"{k}: {v}" for k, v in sorted(errors.items()))
    return str(body.get("error"))


def explain_text(plan: dict[str, Any]) -> str:
    head = f"plan {plan['plan_id']} revision {plan['revision']}: {plan['status']}"
    if plan.get("signal_fingerprint"):
        head += f", signal {plan['signal_fingerprint'][:16]} {plan.get('signal_status') or ''}".rstrip()
    if plan.get("detail"):
        head += f" ({plan['detail']})"
    reason = plan.get("reason")
    if not reason:
        return head + "\n  not evaluated yet"
    lines = [head, f"  evaluated {plan.get('evaluated_at')}: {reason['result']}"]
    for c in reason["conditions"]:
        flags = "".join(f" [{f}]" for f in ("optional", "guard") if c.get(f))
        age = f" (data {c['age_ms']} ms old)" if c.get("age_ms") is not None else ""
        used = "" if c["effective"] == c["value"] else f" -> {c['effective']}"
        lines.append(f"  {c['path']} {c['type']}{flags}: {c['value']}{used}: {c['detail']}{age}")
    return "\n".join(lines)


def cmd_plan(args: argparse.Namespace, env: dict[str, str]) -> int:
    cfg = settings_mod.load(env)
    cluster = cfg.election.cluster
    raw = _read(args.file) if args.plan_command in ("create", "edit") else b""
    with open_database(database_url(args), "haexec-cli", max_size=1) as pool, pool.connection() as conn:
        if args.plan_command in ("create", "edit"):
            try:
                body = loads(raw)
            except (BodyTooLarge, DuplicateKey) as e:
                print(f"haexec plan: the plan is refused: {e}", file=sys.stderr)
                return EXIT_CONFIG
            except (ValueError, RecursionError):
                print("haexec plan: the plan is not valid JSON", file=sys.stderr)
                return EXIT_CONFIG
            if args.plan_command == "edit":
                if not isinstance(body, dict):
                    print("haexec plan: the plan must be a JSON object", file=sys.stderr)
                    return EXIT_CONFIG
                answer = plans_api.edit(conn, cluster, args.plan_id, {**body, "revision": args.revision})
            else:
                answer = plans_api.create(conn, cluster, f"cli:{getpass.getuser()}", body)
            b = answer.body
            return _finish(answer, args.json, f"{b.get('plan_id')} revision {b.get('revision')}: {b.get('status')}")
        if args.plan_command == "list":
            answer = plans_api.list_plans(conn, cluster, args.status, args.limit)
            rows = answer.body["plans"]
            text = "\n".join(
                f"{p['plan_id']}  r{p['revision']}  {p['status']:<9}  {p['created_at']}  {p['detail'] or ''}".rstrip()
                for p in rows
            )
            return _finish(answer, args.json, text or "no plans")
        if args.plan_command == "cancel":
            answer = plans_api.cancel(conn, cluster, args.plan_id, args.actor or f"cli:{getpass.getuser()}")
            return _finish(answer, args.json, f"{args.plan_id}: cancelled")
        answer = plans_api.show(conn, cluster, args.plan_id)
        if answer.status != 200:
            return _finish(answer, args.json, "")
        if args.plan_command == "explain":
            body = {k: answer.body[k] for k in ("plan_id", "revision", "status", "evaluated_at", "reason")}
            return _finish(plans_api.Answer(200, body), args.json, explain_text(answer.body))
        return _finish(answer, args.json, json.dumps(answer.body, indent=2, default=str))


def cmd_news(args: argparse.Namespace, env: dict[str, str]) -> int:
    try:
        rows = load(Path(os.path.expanduser(args.file)))
    except NewsFileError as e:
        print(f"haexec news: {e}", file=sys.stderr)
        return EXIT_CONFIG
    with open_database(database_url(args), "haexec-cli", max_size=1) as pool, pool.connection() as conn:
        added = store.import_news(conn, rows)
    answer = {"file": args.file, "events": len(rows), "new": added}
    print(json.dumps(answer) if args.json else f"{args.file}: {len(rows)} events, {added} new")
    return 0


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    plan = sub.add_parser("plan", help="conditional trade plans: create, edit, list, show, cancel, explain")
    plansub = plan.add_subparsers(dest="plan_command", required=True)
    create = plansub.add_parser("create", parents=[common], help="store a plan (a JSON file, or - for stdin)")
    create.add_argument("file", help="the plan's JSON file, or - to read it from stdin")
    edit = plansub.add_parser("edit", parents=[common], help="a new revision of a pending plan (compare-and-set)")
    edit.add_argument("plan_id")
    edit.add_argument("file", help="the whole plan's JSON file, or - to read it from stdin")
    edit.add_argument("--revision", type=int_in(1, 2**31 - 1), required=True, help="the revision being edited")
    lst = plansub.add_parser("list", parents=[common], help="the latest plans, newest first")
    lst.add_argument("--status", choices=plans_api.STATUSES)
    lst.add_argument("--limit", type=int_in(1, MAX_PLANS), default=50, help=f"at most this many (1..{MAX_PLANS})")
    for name, text in (
        ("show", "one plan: its JSON, status, signal and latest reason vector"),
        ("cancel", "cancel a pending plan (too late once it executed: exit 1 with its order)"),
        ("explain", "why the plan did or did not fire: each condition's value, threshold and data age"),
    ):
        p = plansub.add_parser(name, parents=[common], help=text)
        p.add_argument("plan_id")
        if name == "cancel":
            p.add_argument("--actor", help="who (default cli:<user>)")
    for p in (create, edit, lst, *[plansub.choices[n] for n in ("show", "cancel", "explain")]):
        p.add_argument("--json", action="store_true")
    plan.set_defaults(engine_func=cmd_plan)

    news = sub.add_parser("news", help="scheduled news events for the news filter")
    newssub = news.add_subparsers(dest="news_command", required=True)
    imp = newssub.add_parser("import", parents=[common], help="import events from a CSV or iCalendar file")
    imp.add_argument("file")
    imp.add_argument("--json", action="store_true")
    news.set_defaults(engine_func=cmd_news)
