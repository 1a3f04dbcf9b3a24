"""``edgefl device status``: real signals of this machine, the decision, its reasons and its exit status."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.federation_tools import edgefl


def status(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(edgefl("device", "status", *args), capture_output=True, text=True, timeout=60)


def test_this_machine_as_json() -> None:
    done = status("--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["decision"] == {"eligible": True, "reasons": ["no policy configured"], "failed": []}
    assert report["signals"]["power"] in ("mains", "charging", "battery")
    assert report["signals"]["free_memory_mb"] > 0 and report["sources"]["free_memory_mb"] == "psutil memory / disk"


def test_a_policy_over_a_signals_file(tmp_path: Path) -> None:
    policy, signals = tmp_path / "policy.toml", tmp_path / "signals.json"
    policy.write_text("require-charging = true\nmin-battery-percent = 30\nrequire-unmetered = true\n"
                      "hold-seconds = 60\n")
    signals.write_text(json.dumps({"power": "battery", "battery_percent": 20, "network": "metered",
                                   "interface": "wwan0"}))
    done = status("--policy", str(policy), "--signals", str(signals))
    assert done.returncode == 1, done.stderr  # not eligible
    assert "decision: not eligible\n  - not charging\n  - battery 20% (minimum 30%)\n" \
           "  - metered network (wwan0)\n" in done.stdout
    assert "(the agent also waits until every condition has held for 60 s (hold-seconds))" in done.stdout
    assert "power            battery           signals file" in done.stdout

    signals.write_text(json.dumps({"power": "charging", "battery_percent": 80, "network": "unmetered"}))
    done = status("--policy", str(policy), "--signals", str(signals), "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["decision"]["eligible"] is True


def test_bad_inputs_get_clear_errors(tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text("require-charging = yes\n")
    done = status("--policy", str(policy))
    assert done.returncode == 2 and "edgefl device: error:" in done.stderr and "not valid TOML" in done.stderr
    policy.write_text("min-battery = 30\n")
    done = status("--policy", str(policy))
    assert done.returncode == 2 and f"{policy}: min-battery: unknown key" in done.stderr
    signals = tmp_path / "signals.json"
    signals.write_text('{"charging": true}')
    policy.write_text("require-charging = true\n")
    done = status("--policy", str(policy), "--signals", str(signals))
    assert done.returncode == 2 and "unknown signal 'charging'" in done.stderr


def test_signals_without_a_policy_are_refused(tmp_path: Path) -> None:
    data = tmp_path / "d.npz"
    data.write_bytes(b"")
    done = subprocess.run(edgefl("device", "--device-id", "x", "--data", str(data), "--signals",
                                 str(tmp_path / "s.json")), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--signals needs --policy" in done.stderr
