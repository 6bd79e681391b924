"""Stage 3, scoring: the networks' score parts L_R, L_fD (:mod:`.parts`), anomaly maps
(:mod:`.localization`), label-free snapshot selection with synthetic defects (:mod:`.selection`), the
decision threshold (:mod:`.threshold`), image and pixel metrics (:mod:`.metrics`, :mod:`.pixel_metrics`)."""
