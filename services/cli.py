"""`aiops`: run the suite, mint tokens, manage signing keys, score CSVs offline."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping, Sequence

from services.kit import settings as kit_settings


def _gateway_settings(env: Mapping[str, str]) -> object:
    from gateway.settings import GatewaySettings

    try:
        return GatewaySettings.from_env(env)
    except kit_settings.SettingsError as exc:
        raise SystemExit(f"aiops: {exc}") from exc


def mint(env: Mapping[str, str], *, role: str, subject: str, ttl: float) -> str:
    """A token for `role`, signed by the local keyring (created if absent)."""
    from gateway import auth, keyring
    from gateway.settings import GatewaySettings

    settings = _gateway_settings(env)
    assert isinstance(settings, GatewaySettings)
    roles = [r.strip() for r in role.split(",") if r.strip()]
    unknown = [r for r in roles if r not in auth.KNOWN_ROLES]
    if not roles or unknown:
        raise SystemExit(f"aiops: unknown role {unknown or role!r}; use {sorted(auth.KNOWN_ROLES)}")
    ring = keyring.Keyring.load_or_create(
        settings.keyring_dir, max_token_ttl_seconds=settings.max_token_ttl_seconds
    )
    return keyring.mint_token(
        ring,
        subject=subject,
        roles=roles,
        issuer=settings.issuer,
        audience=settings.audience,
        ttl_seconds=min(ttl, settings.max_token_ttl_seconds),
    )


def _keys(env: Mapping[str, str], action: str) -> int:
    import datetime as dt

    from gateway import keyring
    from gateway.settings import GatewaySettings

    settings = _gateway_settings(env)
    assert isinstance(settings, GatewaySettings)
    ring = keyring.Keyring.load_or_create(
        settings.keyring_dir, max_token_ttl_seconds=settings.max_token_ttl_seconds
    )
    if action == "rotate":
        print(ring.rotate())
        return 0
    published = {k["kid"] for k in ring.jwks()["keys"]}
    for meta in ring.keys():  # noqa: SIM118 (a Keyring, not a dict)
        state = (
            "active"
            if meta.kid == ring.active_kid
            else ("published" if meta.kid in published else "expired")
        )
        created = dt.datetime.fromtimestamp(meta.created_at, dt.UTC).isoformat(timespec="seconds")
        print(f"{meta.kid}\t{state}\tcreated {created}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aiops", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="start the whole suite with local Redis and Postgres")
    run.add_argument("--quiet", action="store_true", help="do not print the banner")
    token = sub.add_parser("token", help="print a signed token for a role")
    token.add_argument("--role", required=True, help="viewer, operator, admin or agent")
    token.add_argument("--subject", default="", help="the token's sub (default: <role>-cli)")
    token.add_argument("--ttl", type=float, default=3600.0, help="lifetime in seconds")
    keys = sub.add_parser("keys", help="manage the JWT signing keys")
    keys.add_argument("action", choices=("rotate", "list"))
    bk = sub.add_parser("backup", help="back up or restore Redis, Postgres and configuration")
    bk.add_argument("action", choices=("create", "list", "verify", "restore"))
    bk.add_argument("archive", nargs="?", help="the archive to verify or restore")
    bk.add_argument("--dest", help="backup directory (default $AIOPS_BACKUP_DIR or .state/backups)")
    bk.add_argument("--force", action="store_true", help="restore over non-empty stores")
    mt = sub.add_parser("maintenance", help="switch maintenance mode through the gateway")
    mt.add_argument("action", choices=("on", "off", "status"))
    mt.add_argument("--reason", default="", help="shown to every refused caller (required for on)")
    mt.add_argument("--minutes", type=float, help="end by itself after this long (default 24 h)")
    mt.add_argument("--url", default="http://localhost:3000", help="the gateway")
    rs = sub.add_parser("restart", help="rolling restart of a running `aiops run`, no gap")
    rs.add_argument("names", nargs="*", help="feedback, telemetry, anomaly, remediation, gateway")
    detect = sub.add_parser("detect", help="score a timestamp,value CSV with the detector")
    detect.add_argument("input")
    detect.add_argument("output")
    args = parser.parse_args(argv)
    env = kit_settings.environ()

    if args.command == "run":
        from services import supervisor
        from services.kit import logging as kit_logging

        kit_logging.configure("supervisor", env.get("AIOPS_LOG_LEVEL", "INFO"))
        return supervisor.run(env, banner=not args.quiet)
    if args.command == "restart":
        from services import supervisor

        state = kit_settings.default_state_dir(env)
        try:
            results = supervisor.request_restart(state, args.names)
        except (RuntimeError, TimeoutError) as exc:
            print(f"aiops restart: {exc}", file=sys.stderr)
            return 1
        for name, result in results.items():
            print(f"{name}\t{result}")
        return 0 if all(r == "restarted" for r in results.values()) else 1
    if args.command == "token":
        print(mint(env, role=args.role, subject=args.subject or f"{args.role}-cli", ttl=args.ttl))
        return 0
    if args.command == "keys":
        return _keys(env, args.action)
    if args.command in ("backup", "maintenance"):
        from services.ops import commands

        if args.command == "backup":
            return commands.backup_command(env, args.action, args.archive, args.dest, args.force)
        admin = mint(env, role="admin", subject="maintenance-cli", ttl=300)
        return commands.maintenance_command(
            env, args.action, args.reason, args.minutes, args.url, admin
        )
    if args.command == "detect":
        from services.anomaly import offline

        return offline.main([args.input, args.output])
    return 2


if __name__ == "__main__":
    logging.basicConfig()
    sys.exit(main())
