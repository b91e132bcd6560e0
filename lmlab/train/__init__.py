"""Training: the loop, its optimizers, schedules and safety nets (lessons 00, 09, 11).

- :mod:`.loop`: :func:`~.loop.train` (driven by a :class:`~.config.TrainConfig`) and evaluation.
- :mod:`.config`: :class:`~.config.TrainConfig`, every option of the loop, validated.
- :mod:`.policies`: the loop's policies as small named pieces (optimizer, learning rate, batch ramp, clipping,
  non-finite losses, the data stream, checkpoint save/resume); spikes are :class:`~.spikes.SpikeGuard`.
- :mod:`.optim`: AdamW and Adafactor from scratch, global-norm clipping, weight-decay groups.
- :mod:`.schedule`: warm-up + cosine, the batch-size ramp.
- :mod:`.spikes`: loss-spike detection and the published remedies.
- :mod:`.checkpoint`: checkpoints that resume bit for bit.
- :mod:`.precision` / :mod:`.loss_scaling`: floating-point formats bit by bit, loss scaling and master
  weights (lesson 11).

A new optimizer goes in :mod:`.optim`, a new schedule in :mod:`.schedule` (its name in ``OPTIMIZERS`` /
``SCHEDULES`` there, which :class:`~.config.TrainConfig` checks, and its dispatch in :mod:`.policies`).
"""
