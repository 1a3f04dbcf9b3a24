"""What ``edgefl device status`` prints: every signal with its source, the decision and its reasons."""

from __future__ import annotations

import json
from pathlib import Path

from edge_runtime.policy import AlwaysEligible, Decision, Scheduler
from edge_runtime.policy_file import Policy
from edge_runtime.signals import SIGNAL_NAMES, SignalReader, describe


def print_status(reader: SignalReader, policy: Policy | None, policy_path: Path | None, as_json: bool) -> None:
    """Read the signals once, decide once (a fresh scheduler: any hold time starts now), and print both."""
    if policy is None:
        signals, decision = reader.read(), AlwaysEligible().check()
    else:
        scheduler = Scheduler(policy, reader)
        decision = scheduler.check()
        signals = scheduler.last_signals
    sources = reader.sources()
    if as_json:
        print(json.dumps({"signals": signals.as_dict(), "sources": sources,
                          "policy": str(policy_path) if policy_path else None,
                          "decision": _decision_dict(decision)}, indent=2))
        return
    width = max(len(n) for n in SIGNAL_NAMES)
    print(f"{'signal':<{width}}  {'value':<16}  source")
    for name in SIGNAL_NAMES:
        print(f"{name:<{width}}  {describe(name, getattr(signals, name)):<16}  {sources.get(name, 'not exposed here')}")
    print()
    print(f"policy:   {policy_path or 'none (no constraints; pass --policy FILE)'}")
    print(f"decision: {'eligible' if decision.eligible else 'not eligible'}")
    for reason in decision.reasons:
        print(f"  - {reason}")


def _decision_dict(decision: Decision) -> dict[str, object]:
    return {"eligible": decision.eligible, "reasons": list(decision.reasons), "failed": list(decision.failed)}
