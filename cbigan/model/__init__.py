"""Stage 2, model: the networks E, G, D (:mod:`.networks`), the losses (:mod:`.losses`), the CBiGAN
``keras.Model`` with its ``train_step`` (:mod:`.gan`) and the tf.distribute strategies (:mod:`.distribute`)."""
