"""The sanity-checks room: ``glam sanity`` (issue 18), evidence that the attribution maps explain
the model — model randomization (``randomize``), similarity measures (``similarity``),
deletion / insertion faithfulness (``faithfulness``), indicators (``indicators``) and the
workflow writing them to an archive (``workflow``, ``runner``). Imports ``glam.errors``,
the engine, ``glam.api``, the archive (its ``sanity`` group), the report (the sanity
figure) and ``glam.importers``; never the gate, the runs workflows or the CLI.
The public function is ``glam.sanity(...)`` (:func:`glam.sanity_checks.workflow.sanity`).
"""
