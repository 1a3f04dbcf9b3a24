"""Device profiles for fleet emulation (see the fleet emulation issue)."""
