"""Records and settings every stage shares, light to import (no TensorFlow at import time): the resolved
settings (:mod:`.config`), the input kinds (:mod:`.kinds`), the data folder layout (:mod:`.layout`), image
operations (:mod:`.imageops`), the anomaly score formula (:mod:`.anomaly_score`), the run folder
(:mod:`.runfolder`), the per-image result record (:mod:`.results`), errors and progress bars."""
