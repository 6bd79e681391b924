"""Stage 4b, reporting: test-set evaluation (:mod:`.evaluation`), tables (:mod:`.tables`), figures
(:mod:`.figures` draws, :mod:`.plots` gathers) and the HTML report (:mod:`.report`)."""
