"""The training run: data, fit, monitoring and backups (:mod:`.run`), callbacks (:mod:`.callbacks`),
preview images (:mod:`.previews`); it calls every stage (threshold, selection, export) at its end."""
