"""Privacy for regulated data: PII detection and masking, keyed pseudonyms, guardrails, memorization audits.

    from mlcore.privacy import detect_pii, mask_pii, Pseudonymizer, scan_input, scan_output, canary_exposure
"""

from mlcore.privacy.audit.memorization import Exposure, SecretSpace, canary_exposure
from mlcore.privacy.detect import RECOGNIZERS, detect_pii
from mlcore.privacy.evaluation.evaluate import KindScore, evaluate
from mlcore.privacy.guards.guardrails import (
    OutputGuard,
    ScanResult,
    injection_score,
    scan_input,
    scan_output,
    scan_stream,
)
from mlcore.privacy.guards.injection import InjectionReport, detect_injection
from mlcore.privacy.guards.streaming import StreamScanner
from mlcore.privacy.recognizers.checksums import aba_valid, iban_checksum_valid, luhn_check_digit, luhn_valid
from mlcore.privacy.spans import KINDS, PiiSpan, resolve_overlaps
from mlcore.privacy.transforms.masking import STRATEGIES, decrypt, mask_pii, mask_stream, unmask
from mlcore.privacy.transforms.pseudonym import Pseudonymizer, pseudonym_for
from mlcore.privacy.transforms.vault import Vault

__all__ = [
    "KINDS", "RECOGNIZERS", "STRATEGIES", "Exposure", "KindScore", "SecretSpace", "canary_exposure", "OutputGuard", "PiiSpan", "Pseudonymizer", "ScanResult",
    "StreamScanner", "aba_valid", "decrypt", "detect_pii", "evaluate", "iban_checksum_valid", "injection_score",
    "luhn_check_digit", "luhn_valid", "mask_pii", "mask_stream", "pseudonym_for", "resolve_overlaps",
    "scan_input", "scan_output", "scan_stream", "unmask",
    "InjectionReport", "Vault", "detect_injection",
]
