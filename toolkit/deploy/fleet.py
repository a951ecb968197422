"""Fleets: the same bundle to many boards, a bounded number at a time, each board on its own.

Hosts come from ``--host`` (repeatable) and an inventory file whose entries may override parts of the
camera config per board (camera name, source, zones). A failing board never stops or half-updates the
others: each one either switches to the new release in one rename or keeps what it ran. With ``staged``,
the first board goes alone and the rest follow only when it is healthy.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from devices.bundle import Bundle
from devices.daemon.config import merge
from devices.errors import ConfigError
from toolkit.deploy.profiles import PROFILES
from toolkit.deploy.release import DeployOptions, HostResult, deploy_host, read_config

log = logging.getLogger(__name__)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InventoryHost(_Model):
    """One board of the inventory."""

    host: str = Field(min_length=1, description="user@host or an alias of your SSH config.")
    target: str | None = Field(default=None, description=f"Profile of this board: one of {sorted(PROFILES)}.")
    overrides: dict[str, Any] = Field(default_factory=dict,
                                      description="Parts of the camera config for this board (camera, source, zones).")


class InventoryDefaults(_Model):
    target: str | None = None
    config: Path | None = Field(default=None, description="Camera config for every board (relative to the inventory).")


class Inventory(_Model):
    """``--inventory hosts.yaml``: the boards of a fleet."""

    defaults: InventoryDefaults = InventoryDefaults()
    hosts: tuple[InventoryHost, ...] = Field(min_length=1)


def load_inventory(path: Path) -> Inventory:
    """Read and validate an inventory file.

    Raises:
        ConfigError: Names the file, the field and the fix.
    """
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
        inventory = Inventory.model_validate(data)
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read the inventory {path}: {exc}",
                          "see the inventory example in docs/deploy.md") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"inventory {path}: {where}: {first['msg']} (got {first.get('input')!r})",
                          "see the inventory example in docs/deploy.md") from exc
    for target in (inventory.defaults.target, *(host.target for host in inventory.hosts)):
        if target is not None and target not in PROFILES:
            raise ConfigError(f"inventory {path}: unknown target {target!r}", f"use one of {sorted(PROFILES)}")
    if inventory.defaults.config is not None and not inventory.defaults.config.is_absolute():
        inventory = inventory.model_copy(update={"defaults": inventory.defaults.model_copy(
            update={"config": Path(path).parent / inventory.defaults.config})})
    return inventory


@dataclass(frozen=True)
class FleetHost:
    """One board to deploy: where, which profile, and its own config."""

    host: str
    options: DeployOptions
    config: dict[str, Any]


def plan_hosts(hosts: Sequence[str], inventory: Path | None, config: Path | None,
               options: DeployOptions) -> list[FleetHost]:
    """Every board of ``--host`` and the inventory, each with its merged config and options."""
    base = read_config(config)
    planned = [FleetHost(host, options, base) for host in hosts]
    if inventory is not None:
        inv = load_inventory(inventory)
        inv_base = read_config(inv.defaults.config) if inv.defaults.config and config is None else base
        for entry in inv.hosts:
            target = entry.target or inv.defaults.target or options.target
            planned.append(FleetHost(entry.host, replace(options, target=target), merge(inv_base, entry.overrides)))
    if not planned:
        raise ConfigError("no board to deploy to", "pass --host user@board (repeatable) or --inventory hosts.yaml")
    names = [p.host for p in planned]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"boards named more than once: {duplicates}", "name each board once")
    return planned


def deploy_fleet(bundle: Bundle, hosts: Sequence[FleetHost], parallel: int = 4, staged: bool = False,
                 on_result: Callable[[HostResult], None] | None = None) -> list[HostResult]:
    """Deploy to every board, at most ``parallel`` at a time; results in the order of ``hosts``.

    Args:
        bundle: The verified bundle.
        hosts: The boards (``plan_hosts``).
        parallel: Boards deployed at the same time.
        staged: Deploy the first board alone and go on only if it ends healthy on the new release.
        on_result: Called with each board's result as soon as it is known (progress output).
    """
    if parallel < 1:
        raise ConfigError(f"--parallel {parallel} is not a number of boards", "use 1 or more")

    def one(entry: FleetHost) -> HostResult:
        result = deploy_host(entry.host, bundle, entry.config, entry.options)
        if on_result:
            on_result(result)
        return result

    results: list[HostResult] = []
    rest = list(hosts)
    if staged and len(rest) > 1:
        first = one(rest.pop(0))
        results.append(first)
        if not first.ok:
            reason = f"staged rollout stopped: {first.host} did not end healthy ({first.result})"
            skipped = [HostResult(h.host, "skipped", detail=reason) for h in rest]
            for result in skipped:
                if on_result:
                    on_result(result)
            return results + skipped
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        results += list(pool.map(one, rest))
    return results


def render_table(results: Sequence[HostResult]) -> str:
    """What each board runs now, one row per board."""
    rows = [("host", "result", "release", "bundle", "time", "detail")]
    for r in results:
        rows.append((r.host, r.result, r.release or "-", r.bundle or "-", f"{r.seconds:.1f} s",
                     r.detail.splitlines()[0][:90] if r.detail else ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join([*(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)), row[-1]])
                     for row in rows)
