"""`arctic verify`: proofs on a user's own recipe that its setup trains what it should (docs/verify.md)."""

from arctic_core.verify.base import (
    CannotRun,
    Check,
    Row,
    Variant,
    VariantResult,
    VerifyContext,
    compare_step,
    diff,
)

__all__ = ["CannotRun", "Check", "Row", "Variant", "VariantResult", "VerifyContext", "compare_step", "diff"]
