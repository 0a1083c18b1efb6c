"""The batch room: ``glam batch``, model zoos x image sets on a Ray cluster into one archive.

Holds the plan (``plan``: TOML or command-line options -> tasks), the Ray worker
(``worker``: imports each model once, runs :func:`glam.runs.analyze_one` into its own
HDF5 shard), shard assembly (``shards``: adopt finished runs into the archive by copy or
external link, the ``batch`` group) and the driver (``driver``: cluster start/join,
scheduling, progress, resume, failures).

May import: ``glam.errors``, ``glam.runs``, ``glam.api``, ``glam.archive``, ``glam.paths``,
``glam.engine``, ``glam.importers``. Ray itself is imported only inside functions (the
``batch`` extra).
"""
