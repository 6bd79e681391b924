"""Stage 1, data: decoding images and the tf.data pipelines (:mod:`.pipeline`), synthetic defects
(:mod:`.defects`)."""
