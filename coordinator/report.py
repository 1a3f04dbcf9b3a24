"""One JSON line per round: what was selected, accepted, refused and why, traffic, time, metrics; and the short
form a terminal shows (``human_line``).

Lines are strict JSON: a value that is not finite (an overflowing loss) is
written as null, and the line's ``nulled`` field names it and says why.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from coordinator.checkpoint import ROUNDS_FILE
from coordinator.evaluation import Metrics
from coordinator.rounds import LATE, RoundOutcome, Tally

log = logging.getLogger(__name__)


def round_line(outcome: RoundOutcome, tally: Tally, started_at: float, duration_s: float, model_version: int,
               test: Metrics | None, federated: Metrics | None,
               privacy: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``started_at`` is on the coordinator's clock (seconds since the epoch; simulated in an emulated fleet);
    ``privacy``: central DP's epsilon so far, delta, noise multiplier and bound (None: DP is off)."""
    plan = outcome.plan
    return strict_line({
        "round": plan.number,
        "status": outcome.status,
        "closed_by": outcome.closed_by,
        "model_version": model_version,
        "eligible": plan.eligible,
        "goal": plan.goal,
        "selected": len(plan.selected),
        "reported": outcome.reported,
        "failed": sum(tally.failed.values()),
        "interrupted": sum(tally.interrupted.values()),
        "dropped": outcome.no_answer if outcome.closed_by == "deadline" else 0,
        "cancelled": outcome.no_answer if outcome.closed_by != "deadline" else 0,
        "late": tally.rejected[LATE],  # over-selected devices finishing after the round closed: expected, not bad
        "rejected": {reason: n for reason, n in sorted(tally.rejected.items()) if reason != LATE},
        "failure_reasons": dict(sorted((tally.failed + tally.interrupted).items())),
        "examples": outcome.examples,
        "train_loss": outcome.train_loss,
        "bytes_in": tally.bytes_in,
        "bytes_out": tally.bytes_out,
        **traffic(tally, len(plan.selected)),
        "started_at": round(started_at, 3),
        "duration_s": round(duration_s, 3),
        "test": asdict(test) if test else None,
        "federated_eval": asdict(federated) if federated else None,
        "strategy": dict(outcome.diagnostics),
        "privacy": dict(privacy) if privacy is not None else None,
        **({"secure": tally.secure} if tally.secure is not None else {}),
    })


def traffic(tally: Tally, selected: int) -> dict[str, Any]:
    """Bytes up (accepted updates) and down (what the selected devices fetch for their tasks), per round and per
    device, the codecs of the accepted updates, and their compression against float32 (docs/PROTOCOL.md 12)."""
    updates = sum(tally.codec_mix.values())
    return {
        "bytes_up": tally.bytes_up,
        "bytes_up_per_device": round(tally.bytes_up / updates, 1) if updates else None,
        "bytes_up_float32": tally.bytes_up_float32,
        "bytes_down": tally.bytes_down,
        "bytes_down_per_device": round(tally.bytes_down / selected, 1) if selected else None,
        "codec_mix": dict(sorted(tally.codec_mix.items())),
        "compression": round(tally.bytes_up_float32 / tally.bytes_up, 3) if tally.bytes_up else None,
    }


def strict(value: Any, path: str = "", nulled: dict[str, str] | None = None) -> Any:
    """``value`` with every non-finite float replaced by None; each replacement's path and value go to
    ``nulled`` (``{"train_loss": "inf"}``)."""
    if isinstance(value, float) and not math.isfinite(value):
        if nulled is not None:
            nulled[path] = f"{value} is not a JSON number"
        return None
    if isinstance(value, dict):
        return {k: strict(v, f"{path}.{k}" if path else str(k), nulled) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v, f"{path}[{i}]", nulled) for i, v in enumerate(value)]
    return value


def strict_line(line: dict[str, Any]) -> dict[str, Any]:
    """``line`` with no Infinity or NaN: such values become null, listed in a ``nulled`` field."""
    nulled: dict[str, str] = {}
    clean: dict[str, Any] = strict(line, "", nulled)
    if nulled:
        clean["nulled"] = nulled
    return clean


class RoundLog:
    """Appends round lines to ``rounds.jsonl`` in the state folder and hands each to a callback."""

    def __init__(self, folder: Path, on_line: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.path = Path(folder) / ROUNDS_FILE
        self._on_line = on_line

    def write(self, line: dict[str, Any]) -> None:
        """Append ``line`` (strict JSON: ``round_line`` made it so) and hand it to the callback."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as handle:
            handle.write(json.dumps(line, allow_nan=False) + "\n")
        log.info("round %d %s: %d/%d reported", line["round"], line["status"], line["reported"], line["selected"])
        if self._on_line is not None:
            self._on_line(line)


def human_line(line: Mapping[str, Any], rounds: int | None = None) -> str:
    """A round line in one short line for a terminal: round, outcome, reports of selected, test accuracy (and the
    devices' own, after a federated evaluation, personalized too when the model has personal weights), failed
    tasks, refusals other than late updates, traffic (with the accepted updates' bytes, codecs and compression
    against float32), duration."""
    number = f"{line['round']}/{rounds}" if rounds else str(line["round"])
    status = line["status"] if line["status"] == "committed" else f"{line['status']} ({line['closed_by']})"
    parts = [f"round {number}", status, f"{line['reported']}/{line['selected']} reported", f"acc {_accuracy(line)}"]
    if line.get("failed"):
        parts.append(f"{line['failed']} failed")
    refused = sum(line["rejected"].values())
    if refused:
        parts.append(f"{refused} refused")
    parts += [f"in {_size(line['bytes_in'])}", f"out {_size(line['bytes_out'])}"]
    if line.get("bytes_up"):
        parts.append(f"up {_size(line['bytes_up'])} ({_codec_mix(line['codec_mix'])}, {line['compression']:.1f}x)")
    parts.append(f"{line['duration_s']:.1f} s")
    privacy = line.get("privacy")
    if privacy:
        epsilon = privacy["epsilon"]
        parts.append(f"eps {epsilon:.3g}" if epsilon is not None else "eps inf")
        if privacy.get("stopped"):
            parts.append(f"stopped: {privacy['stopped']}")
    return "  ".join(parts)


def _codec_mix(mix: Mapping[str, int]) -> str:
    """``int8``, or ``float16 2, int8 3`` when the updates came in several codecs."""
    return next(iter(mix)) if len(mix) == 1 else ", ".join(f"{name} {n}" for name, n in mix.items())


def _accuracy(line: Mapping[str, Any]) -> str:
    test, federated = line.get("test"), line.get("federated_eval")
    text = f"{test['accuracy']:.4f}" if test and test.get("accuracy") is not None else "-"
    if federated and federated.get("accuracy") is not None:
        personal = federated.get("personalized_accuracy")
        extra = f", personalized {personal:.4f}" if personal is not None else ""
        text += f" (devices {federated['accuracy']:.4f}{extra})"
    return text


def _size(count: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} B"
