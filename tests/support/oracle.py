"""The `oracle` test drafter now lives in `jetspec.testing.oracle`; re-exported for old imports."""

from jetspec.testing.oracle import OracleDrafter, OracleOptions, jetspec_drafters  # noqa: F401
