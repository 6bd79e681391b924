"""Stage 4a, serving: the SavedModel export (:mod:`.export`), LiteRT (:mod:`.litert`), predictions on new
images (:mod:`.predict`)."""
