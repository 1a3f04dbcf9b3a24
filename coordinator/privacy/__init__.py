"""Differential privacy on the coordinator: the accountant (``dp_accounting``) and its sampling model."""

from coordinator.privacy.accountant import (
    RDP_ORDERS,
    PrivacyError,
    RoundEvent,
    allows,
    calibrate_noise,
    epsilon,
    make_accountant,
    round_dp_event,
    run_dp_event,
)

__all__ = [
    "RDP_ORDERS",
    "PrivacyError",
    "RoundEvent",
    "allows",
    "calibrate_noise",
    "epsilon",
    "make_accountant",
    "round_dp_event",
    "run_dp_event",
]
