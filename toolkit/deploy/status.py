"""Short summaries of what the board says (systemctl, journalctl, /healthz, /api/status)."""

from __future__ import annotations

from typing import Any

#: Journal lines that ``--status`` shows under the summary.
STATUS_JOURNAL_LINES = 5


def summary(host: str, action: str, answer: dict[str, Any]) -> str:
    """A few lines for a person: what runs, whether it is healthy, and what it last logged."""
    if action == "logs":
        return "\n".join([f"== {host}: journal of the service ==", *answer.get("journal", [])])
    if action == "rollback":
        return (f"{host}: {answer['result']}: {answer.get('from')} -> {answer['release']}; "
                f"health: {answer.get('health', '')}")
    release = answer.get("release") or {}
    state = answer.get("state") or {}
    lines = [f"== {host} =="]
    if not release:
        lines.append("nothing deployed")
    else:
        lines.append(f"release   {release.get('id')} (deployed {release.get('deployed_at')}; "
                     f"{len(answer.get('releases', []))} kept)")
        lines.append(f"bundle    {release.get('bundle')} ({str(release.get('bundle_sha256', ''))[:12]}), "
                     f"{release.get('format')} on {release.get('runtime')}, target {release.get('target')}")
    lines.append(f"service   {state.get('ActiveState', '?')} ({state.get('SubState', '?')}), since "
                 f"{state.get('ExecMainStartTimestamp') or '-'}, restarts {state.get('NRestarts', '?')}")
    lines.append(f"health    {'ok' if answer.get('healthy') else 'FAILING'}: {answer.get('health', '')[:120]}")
    api = answer.get("api")
    if isinstance(api, dict):
        scalars = {k: v for k, v in api.items() if isinstance(v, (str, int, float, bool)) or v is None}
        if scalars:
            lines.append("status    " + ", ".join(f"{k}={v}" for k, v in list(scalars.items())[:8]))
    journal = answer.get("journal") or []
    if journal:
        lines.append("journal")
        lines += [f"  {line}" for line in journal[-STATUS_JOURNAL_LINES:]]
    return "\n".join(lines)
