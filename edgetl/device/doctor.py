"""The device's checks of a bundle after an update: the live version's conformance set run
right after retrain, adapt or rollback made it live (edgetl.device.conformance), so a version
that does not conform here is named at once, not at the next predict. Torch-free."""

from __future__ import annotations

from typing import Any

__all__ = ["recheck", "say_recheck"]


def recheck(bundle: Any) -> dict[str, Any] | None:
    """The conformance check of a bundle's live version right after an update (retrain, adapt,
    rollback) made it live, as a short dict for reports: ``{"passed", "agreement", "items",
    "cached"}``; None when the bundle carries no set. The verdict is remembered, so the next
    open of this version does not run it again."""
    from edgetl.device.predictor import Predictor

    report = Predictor.from_bundle(bundle, conformance="record").conformance
    if report is None:
        return None
    return {"passed": report.passed, "agreement": report.agreement, "items": report.n_items,
            "min_agreement": report.min_agreement, "cached": report.cached}


def say_recheck(result: dict[str, Any] | None, what: str) -> None:
    """One line on stderr after an update: whether the new live version conforms here."""
    from edgetl.core import ui as _ui

    if result is None:
        return
    line = (f"{what}: the live version's conformance check here: top-1 agreement {result['agreement']:.3f} on "
            f"{result['items']} items")
    if result["passed"]:
        _ui.info(line + " (conforms)")
    else:
        _ui.warn(line + f", below {result['min_agreement']:.2f}: predict will refuse it here; 'edgetl rollback' "
                 "restores the previous version")
