"""Copeau: shop-floor tracker for French Écoles de production (shared package: contract, config, services, CLI)."""

__version__ = "0.1.0"
