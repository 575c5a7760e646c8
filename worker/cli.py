"""`comms`: the command line for people. `comms --help` lists the commands."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

EXIT_INVALID = 2


def _seconds(text: str) -> float:
    """A duration flag: a number of seconds above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds: {text!r}")
    return value


def _email(text: str) -> str:
    """A customer's address, checked and normalised as requests and contact files are."""
    from pydantic import EmailStr, TypeAdapter, ValidationError

    try:
        return str(TypeAdapter(EmailStr).validate_python(text))
    except ValidationError as exc:
        reason = exc.errors(include_url=False)[0]["msg"]
        raise argparse.ArgumentTypeError(f"{reason}: {text[:80]!r}") from None


def _cmd_send(args: argparse.Namespace) -> int:
    from channels.envelope import InvalidRequest
    from worker.producer import send, wait

    try:
        if args.payload == "-":
            payload = json.load(sys.stdin)
        else:
            with Path(args.payload).open(encoding="utf-8") as source:
                payload = json.load(source)
    except (OSError, ValueError) as exc:
        print(f"comms send: cannot read the payload from {args.payload}: {exc}", file=sys.stderr)
        return EXIT_INVALID
    request: dict[str, Any] = {
        "recipient": args.recipient,
        "channel": args.channel,
        "priority": args.priority,
        "message_payload": payload,
    }
    for key in ("message_id", "signal_type", "severity"):
        if getattr(args, key):
            request[key] = getattr(args, key)
    try:
        receipt = send(request)
    except InvalidRequest as exc:
        print("comms send: the request is not valid, nothing was sent:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        return EXIT_INVALID
    if args.wait:
        try:
            message_id = receipt["dispatch_receipt"]["message_id"]
            receipt = wait(message_id, timeout=args.timeout,
                           resend={**request, "message_id": message_id},
                           resend_after=args.resend_after)
        except TimeoutError as exc:
            print(json.dumps(receipt, indent=2))
            print(f"comms send: {exc}", file=sys.stderr)
            return 1
    print(json.dumps(receipt, indent=2))
    return 0 if receipt["dispatch_receipt"]["status"] in ("queued", "sent") else 1


def _cmd_sandbox(args: argparse.Namespace) -> int:
    import time

    from worker.sandbox import Sandbox

    sandbox = Sandbox(
        args.host, args.port, latency=args.latency, error_rate=args.error_rate
    ).start()
    print(f"# vendor sandbox on {sandbox.url} (Ctrl-C stops it); point the product at it with:")
    for key, value in sorted(sandbox.env().items()):
        print(f"export {key}={value}")
    sys.stdout.flush()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        sandbox.stop()
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from worker.demo import run_demo

    return run_demo()


def _cmd_db(args: argparse.Namespace) -> int:
    from worker.store.db import get_engine

    engine = get_engine()
    print(f"schema is current on {engine.url.render_as_string(hide_password=True)}")
    return 0


def _cmd_schemas(args: argparse.Namespace) -> int:
    from channels.envelope import PAYLOAD_MODELS, DispatchRequest

    schemas: dict[str, Any] = {"request": DispatchRequest.model_json_schema()}
    for channel, models in PAYLOAD_MODELS.items():
        found = [m.model_json_schema() for m in models]
        schemas[channel] = found[0] if len(found) == 1 else {"title": channel, "oneOf": found}
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for name, schema in schemas.items():
            (out / f"{name}.schema.json").write_text(json.dumps(schema, indent=2) + "\n")
        print(f"wrote {len(schemas)} schemas to {out}")
    else:
        print(json.dumps(schemas, indent=2))
    return 0


def _cmd_webhooks(args: argparse.Namespace) -> int:
    from worker.webhooks import serve

    server = serve(args.host, args.port)
    print(f"webhook receiver on http://{args.host}:{args.port} (Ctrl-C stops it)")
    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.server_close()
    return 0


def _cmd_contacts(args: argparse.Namespace) -> int:
    from worker.store import contacts

    if args.action == "import":
        return _import_contacts(Path(args.file), args.batch)
    if args.action == "show":
        found = contacts.get(args.email)
        if found is None:
            print(f"comms contacts: no contact {args.email}", file=sys.stderr)
            return 1
        print(json.dumps(dataclasses.asdict(found), indent=2))
        return 0
    flag, value = CONSENT_FLAGS[args.channel]
    contacts.set_flags(args.email, **{flag: value if args.action == "opt-out" else not value})
    print(f"{args.email}: {args.action} of {args.channel} recorded")
    return 0


#: channel -> (store flag, its value when the customer opts out)
CONSENT_FLAGS = {"sms": ("sms_opt_out", True), "email": ("email_unsubscribed", True),
                 "push": ("push_enabled", False)}


def _import_contacts(path: Path, batch_size: int) -> int:
    from tqdm import tqdm

    from worker.contacts_io import BadRecord, count_records, read_contacts
    from worker.store import contacts

    try:
        total = count_records(path)
    except (OSError, ValueError) as exc:
        print(f"comms contacts import: cannot read {path}: {exc}", file=sys.stderr)
        return EXIT_INVALID
    imported, bad = 0, []
    batch: list[Any] = []
    with tqdm(total=total, unit="contact", file=sys.stderr, disable=None) as bar:
        for item in read_contacts(path):
            if isinstance(item, BadRecord):
                bad.append(item)
            else:
                batch.append(item)
            if len(batch) >= batch_size:
                imported += contacts.import_rows(batch)
                batch.clear()
            bar.update(1)
        imported += contacts.import_rows(batch)
    for record in bad[:20]:
        print(f"  line {record.line}: {record.problem}", file=sys.stderr)
    if len(bad) > 20:
        print(f"  ... and {len(bad) - 20} more", file=sys.stderr)
    print(f"imported {imported} contacts from {path}; {len(bad)} records refused")
    return 1 if bad else 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from worker import bench

    return bench.main(bench.Options(
        messages=args.messages, latency=args.latency, error_rate=args.error_rate,
        workers=args.workers, concurrency=args.concurrency, pool=args.pool,
        receipt_mode=args.receipt_mode, json_path=args.json, broker_url=args.broker_url,
        database_url=args.database_url, latency_seconds=args.latency_seconds,
        skip_reference=args.skip_reference, settle_seconds=args.settle_seconds))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="comms", description="meow-comms dispatcher tools")
    sub = parser.add_subparsers(dest="command", required=True)

    send = sub.add_parser("send", help="dispatch one message; prints its dispatch receipt")
    send.add_argument("--channel", required=True)
    send.add_argument("--recipient", required=True, help="the customer's e-mail address")
    send.add_argument("--priority", required=True, help="CRITICAL, HIGH, MEDIUM or LOW")
    send.add_argument("--payload", required=True, help="message_payload JSON file, or - for stdin")
    send.add_argument("--message-id", dest="message_id")
    send.add_argument("--signal-type", dest="signal_type")
    send.add_argument("--severity")
    send.add_argument("--wait", action="store_true", help="wait for the terminal receipt")
    send.add_argument("--timeout", type=_seconds, default=120.0, help="seconds --wait waits")
    send.add_argument("--resend-after", type=_seconds, default=30.0,
                      help="with --wait: seconds after which a message no worker has accepted is "
                           "sent again, same message_id (then at doubling intervals)")
    send.set_defaults(func=_cmd_send)

    sandbox = sub.add_parser("sandbox", help="run the vendor sandbox HTTP server")
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument("--port", type=int, default=8099)
    sandbox.add_argument("--latency", type=float, default=0.0, help="seconds added to each answer")
    sandbox.add_argument("--error-rate", type=float, default=0.0, help="share of 5xx answers")
    sandbox.set_defaults(func=_cmd_sandbox)

    demo = sub.add_parser("demo", help="the whole pipeline in one process, against the sandbox")
    demo.set_defaults(func=_cmd_demo)

    db = sub.add_parser("db", help="database schema")
    db.add_argument("action", choices=["upgrade"])
    db.set_defaults(func=_cmd_db)

    schemas = sub.add_parser("schemas", help="print (or --out DIR write) the request JSON Schemas")
    schemas.add_argument("--out")
    schemas.set_defaults(func=_cmd_schemas)
    hooks = sub.add_parser("webhooks", help="serve the webhook receiver (unsubscribe, SMS status)")
    hooks.add_argument("--host", default="127.0.0.1")
    hooks.add_argument("--port", type=int, default=8098)
    hooks.set_defaults(func=_cmd_webhooks)

    people = sub.add_parser("contacts", help="the contacts store: import, show, opt out/in")
    people_sub = people.add_subparsers(dest="action", required=True)
    imp = people_sub.add_parser("import", help="upsert contacts from a .csv or .json/.jsonl file")
    imp.add_argument("file")
    imp.add_argument("--batch", type=int, default=1000, help="contacts per transaction")
    show = people_sub.add_parser("show", help="print one contact as JSON")
    show.add_argument("email", type=_email)
    for action in ("opt-out", "opt-in"):
        consent = people_sub.add_parser(action, help=f"record a customer's {action}")
        consent.add_argument("email", type=_email)
        consent.add_argument("--channel", required=True, choices=sorted(CONSENT_FLAGS))
    people.set_defaults(func=_cmd_contacts)
    bench = sub.add_parser("bench", help="benchmark the real pipeline against bare Celery")
    bench.add_argument("-n", "--messages", type=int, default=20_000)
    bench.add_argument("--latency", type=float, default=0.1, help="vendor latency, seconds")
    bench.add_argument("--error-rate", type=float, default=0.0, help="share of vendor 5xx")
    bench.add_argument("--workers", type=int, default=2, help="worker processes")
    bench.add_argument("--concurrency", type=int, default=64, help="per worker process")
    bench.add_argument("--pool", choices=["threads", "prefork", "gevent"], default="threads")
    bench.add_argument("--receipt-mode", choices=["chord", "inline"], default="inline",
                       help="the product default is inline")
    bench.add_argument("--json", help="where the figures go (default bench-results/<time>.json)")
    bench.add_argument("--broker-url", default="redis://127.0.0.1:6379/10")
    bench.add_argument("--database-url",
                       default="postgresql+psycopg2://postgres@127.0.0.1:5432/comms_bench")
    bench.add_argument("--latency-seconds", type=float, default=10.0,
                       help="length of the half-rate run that measures latency")
    bench.add_argument("--skip-reference", action="store_true",
                       help="skip the bare-Celery and naive phases")
    bench.add_argument("--settle-seconds", type=float, default=15.0,
                       help="time Redis gets after the run to return to its baseline")
    bench.set_defaults(func=_cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
