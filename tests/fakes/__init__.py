"""Fakes of outside libraries that cannot run here (e.g. `MetaTrader5`, Windows only)."""
