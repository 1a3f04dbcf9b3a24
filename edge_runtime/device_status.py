"""What ``edgefl device status`` prints: every signal with its source, the decision and its reasons."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from edge_runtime.policy import AlwaysEligible, Decision, Scheduler
from edge_runtime.policy_file import Policy
from edge_runtime.signals import SIGNAL_NAMES, SignalReader, describe


def print_status(reader: SignalReader, policy: Policy | None, policy_path: Path | None, as_json: bool) -> bool:
    """Read the signals once, decide once, print both, and return whether the device is eligible.

    One reading cannot show a duration, so the hold time and the CPU-idle
    duration are left out of this decision; the output says how long the agent
    will wait for them.
    """
    signals = reader.read()  # a signals file that cannot be read is an error here, not a reason
    if policy is None:
        decision = AlwaysEligible().check()
    else:
        decision = Scheduler(replace(policy, hold_s=0.0, cpu_idle_s=0.0), reader).check()
    waits = _waits(policy)
    sources = reader.sources()
    if as_json:
        print(json.dumps({"signals": signals.as_dict(), "sources": sources,
                          "policy": str(policy_path) if policy_path else None,
                          "decision": _decision_dict(decision), "waits": waits}, indent=2))
        return decision.eligible
    width = max(len(n) for n in SIGNAL_NAMES)
    print(f"{'signal':<{width}}  {'value':<16}  source")
    for name in SIGNAL_NAMES:
        print(f"{name:<{width}}  {describe(name, getattr(signals, name)):<16}  {sources.get(name, 'not exposed here')}")
    print()
    print(f"policy:   {policy_path or 'none (no constraints; pass --policy FILE)'}")
    print(f"decision: {'eligible' if decision.eligible else 'not eligible'}")
    for reason in decision.reasons:
        print(f"  - {reason}")
    for wait in waits:
        print(f"  (the agent also waits until {wait})")
    return decision.eligible


def _waits(policy: Policy | None) -> list[str]:
    """The durations a single reading cannot show."""
    if policy is None:
        return []
    waits = []
    if policy.hold_s:
        waits.append(f"every condition has held for {policy.hold_s:g} s (hold-seconds)")
    if policy.cpu_idle_s and policy.max_cpu_percent is not None:
        waits.append(f"CPU use has stayed at or below {policy.max_cpu_percent:g}% for {policy.cpu_idle_s:g} s "
                     "(cpu-idle-seconds)")
    return waits


def _decision_dict(decision: Decision) -> dict[str, object]:
    return {"eligible": decision.eligible, "reasons": list(decision.reasons), "failed": list(decision.failed)}
