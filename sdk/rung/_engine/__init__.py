"""The engine around a task body: what a worker does with one message.

``worker`` (claim, run one attempt, end it; the attempt's session), ``admission``
(queue slots and rate limits before an attempt runs), ``reconciler`` (re-drives runs
whose way forward was lost), ``history`` (a run's events, derived from its items). The
durable operations a task body calls are in ``rung._durable``, below this package.
"""
